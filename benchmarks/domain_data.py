"""Domain specialisation with the user's own text (``--data``), end to end with real weights: the bundled MiniLM
distilled into a 3-layer student trained on the built-in corpus, and the same trained on a domain neither built-in
corpus covers (the licence texts the installed packages ship), both judged on the held-out split of that domain.

    .venv/bin/python benchmarks/domain_data.py

The domain file: every licence file under this environment's ``*.dist-info`` directories, cut into sentences of
40-400 characters, each once, less the few the built-in corpora hold too. ``optimize --data`` shuffles it with a
fixed seed into held-out (20%), validation, calibration and train splits (``optimizers.datasets.user_text``); the
held-out sentences are never trained on. Both students are judged against the source model on those held-out
sentences (cosine of each embedding, recall@10 of a half-sentence query). Writes
``benchmarks/results/domain_data.md``.
"""

from __future__ import annotations

import re
import sys
import sysconfig
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULT_FILE = ROOT / "benchmarks" / "results" / "domain_data.md"
OUT = ROOT / "runs" / "domain"
RECIPE = """
name: domain-student
budget: {min_cosine_mean: 0.5, min_cosine_min: -1.0, min_batch_invariance: null}
candidates:
  - name: student-3-layers
    steps:
      - pass: distill
        config: {layers: 3, epochs: 10, patience: 2, learning_rate: 0.0002}
      - pass: export_onnx
"""
SENTENCE = re.compile(r"(?<=[.;:])\s+(?=[A-Z(\"])")


def licence_sentences() -> list[str]:
    """Sentences of the licence files the installed packages ship, each once, in file order."""
    site = Path(sysconfig.get_paths()["purelib"])
    files = sorted({*site.glob("*.dist-info/LICEN[CS]E*"), *site.glob("*.dist-info/licenses/**/*")})
    seen: dict[str, None] = {}
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="ignore")
        for paragraph in re.split(r"\n\s*\n", text):
            flat = " ".join(paragraph.split())
            for sentence in SENTENCE.split(flat):
                if 40 <= len(sentence) <= 400 and any(c.isalpha() for c in sentence):
                    seen.setdefault(sentence)
    return list(seen)


def judged(package_root: Path, heldout: list[str]) -> dict[str, float]:
    """The package's student against the source model on ``heldout``, run as a replica runs it."""
    from modelpkg.package import load_package
    from modelpkg.pipeline import TextPipeline
    from optimizers.evaluate import OutputsEvaluator
    from optimizers.source import SourceModel, bundled_model_dir

    package = load_package(package_root)
    evaluator = OutputsEvaluator(SourceModel.load(bundled_model_dir()), 2, heldout)
    pipeline = TextPipeline.from_package(package, threads=2)
    settings = package.manifest.serving
    outputs = pipeline.run_as_served(heldout, settings)
    fidelity = evaluator.fidelity(outputs, heldout, None, evaluator.query_outputs(pipeline, heldout, settings))
    return {
        "cosine_mean": fidelity.cosine_mean,
        "cosine_min": fidelity.cosine_min,
        "recall_at10": fidelity.recall_at_10 or 0.0,
        "recall_at10_source": fidelity.source_recall_at_10 or 0.0,
    }


def main() -> None:
    from corpus import load_split, load_train_extra
    from modelpkg.hardware import detect
    from optimizers.chain import optimize
    from optimizers.datasets import user_text
    from optimizers.recipe import Recipe
    from optimizers.source import bundled_model_dir

    OUT.mkdir(parents=True, exist_ok=True)
    splits_ = ("train", "validation", "calibration", "heldout")
    built_in = {*(t for split in splits_ for t in load_split(split)), *load_train_extra()}  # corpus, corpus-large
    found = licence_sentences()
    sentences = [s for s in found if s not in built_in]  # a few (the MIT licence's) are in the corpus too
    data = OUT / "licences.txt"
    data.write_text("\n".join(sentences) + "\n")
    splits = user_text(data)
    recipe = Recipe.model_validate(yaml.safe_load(RECIPE))
    results: dict[str, Any] = {}
    for label, data_file in (("trained on the built-in corpus", None), ("trained on the licences (--data)", data)):
        out = OUT / ("corpus" if data_file is None else "licences")
        chain = optimize(bundled_model_dir(), out, recipe=recipe, data_file=data_file, profile_items=32)
        results[label] = judged(chain.package.root, splits.heldout)
        print(label, results[label], flush=True)
    rows = [
        f"| {label} | {r['cosine_mean']:.4f} | {r['cosine_min']:.4f} | {r['recall_at10']:.4f} "
        f"({r['recall_at10_source']:.4f}) |"
        for label, r in results.items()
    ]
    text = "\n".join(
        [
            "# Domain specialisation: a 3-layer MiniLM student trained on the user's own text",
            "",
            "Command: `python benchmarks/domain_data.py`  ",
            f"CPU: {detect().describe()}",
            "",
            f"Domain: {len(sentences)} sentences of the licence files installed packages ship "
            f"({len(found) - len(sentences)} more that the built-in corpora hold too are left out); `--data` splits: "
            f"train {len(splits.train)}, validation {len(splits.validation)}, calibration {len(splits.calibration)}, "
            f"held-out {len(splits.heldout)} (never trained on). Both students: distilled from the bundled "
            "all-MiniLM-L6-v2 (3 of 6 layers, MSE + cosine on the pooled embeddings, up to 10 epochs), exported to "
            "ONNX fp32; judged against the source on the licences' held-out split.",
            "",
            "| student | cos mean | cos min | recall@10 (source) |",
            "|---|---|---|---|",
            *rows,
            "",
        ]
    )
    print(text)
    RESULT_FILE.write_text(text)


if __name__ == "__main__":
    main()
