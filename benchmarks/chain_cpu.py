"""The optimizer chain against sentence-transformers, on CPU, in one run.

    .venv/bin/python benchmarks/chain_cpu.py [--rounds 3] [--threads 2]

Runs the chain on the bundled MiniLM with two recipes (benchmarks/recipes/minilm-quant.yaml: quantization only,
budget cosine mean >= 0.995 and min >= 0.98; minilm-distill.yaml: distilled students, quantized, mean >= 0.97),
reusing the pass cache. Then, on the 1,000 held-out sentences, it measures sentence-transformers ``encode``
(fp32, batch 32) and every candidate the chain built (our text pipeline, length-sorted batches of 32), in
interleaved rounds, and prints each one's median throughput as a ratio to sentence-transformers, with its
fidelity against sentence-transformers' embeddings. Writes benchmarks/results/chain_cpu.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from optimizers.chain import BudgetNotMetError, Candidate, OutputsEvaluator, optimize  # noqa: E402
from optimizers.corpus import load_split  # noqa: E402
from optimizers.fidelity import output_fidelity  # noqa: E402
from optimizers.source import SourceModel, bundled_model_dir  # noqa: E402

RESULT_FILE = ROOT / "benchmarks" / "results" / "chain_cpu.md"
RECIPES = ("minilm-quant", "minilm-distill")
QUANT_TARGET = (4.0, 0.995, 0.98)  # ratio, cosine mean, cosine min
DISTILL_TARGET = (6.0, 0.97)


def build(out: Path, threads: int) -> dict[str, tuple[str, Candidate]]:
    """Run both recipes; every built candidate by name, with the recipe it came from."""
    built: dict[str, tuple[str, Candidate]] = {}
    for recipe in RECIPES:
        try:
            result = optimize(
                bundled_model_dir(),
                out / recipe,
                recipe=ROOT / "benchmarks" / "recipes" / f"{recipe}.yaml",
                threads=threads,
            )
            candidates = result.candidates
            print(f"{recipe}: built, selected {result.selected.name}", flush=True)
        except BudgetNotMetError as exc:
            print(f"{recipe}: {exc}", flush=True)
            candidates = exc.candidates
        for c in candidates:
            if c.artifact is not None and c.name not in built:
                built[c.name] = (recipe, c)
    return built


def measure(built: dict[str, tuple[str, Candidate]], rounds: int, threads: int) -> tuple[dict, dict]:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    texts = load_split("heldout")
    source = SourceModel.from_dir(bundled_model_dir())
    evaluator = OutputsEvaluator(source, threads, texts)
    st = SentenceTransformer(str(bundled_model_dir()), device="cpu")
    runners = {"sentence-transformers": lambda: st.encode(texts, batch_size=32)}
    for name, (_, candidate) in built.items():
        pipeline = evaluator.pipeline(candidate.artifact)  # type: ignore[arg-type]
        runners[name] = lambda p=pipeline: p.run(texts, max_items=32)[0]
    outputs = {name: np.asarray(run()) for name, run in runners.items()}  # warm-up, and the outputs compared
    speeds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            speeds[name].append(len(texts) / (time.perf_counter() - start))
    medians = {name: statistics.median(v) for name, v in speeds.items()}
    reference = outputs["sentence-transformers"]
    fidelity = {name: output_fidelity(reference, out, task="embedding") for name, out in outputs.items()}
    return medians, fidelity


def render(built: dict, medians: dict, fidelity: dict, rounds: int, threads: int) -> str:
    base = medians["sentence-transformers"]
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    lines = [
        "# Optimizer chain vs sentence-transformers (CPU)",
        "",
        f"Command: `.venv/bin/python benchmarks/chain_cpu.py --rounds {rounds} --threads {threads}` at commit "
        f"{commit}. 1,000 held-out sentences, batches of 32 sorted by length, {threads} threads, median of "
        f"{rounds} interleaved rounds. Fidelity is against sentence-transformers' own embeddings.",
        "",
        "| variant | recipe | items/s | × ST | cos mean | cos min | NN@10 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in sorted(medians, key=lambda n: -medians[n]):
        f = fidelity[name]
        recipe = built[name][0] if name in built else "-"
        lines.append(
            f"| {name} | {recipe} | {medians[name]:.0f} | {medians[name] / base:.2f} | "
            f"{f.cosine_mean:.4f} | {f.cosine_min:.4f} | {f.nn_agreement_at10:.3f} |"
        )

    def within(recipe: str, min_mean: float, min_min: float = -1.0) -> list[str]:
        """Variants the recipe built (not the fp32 source) at or above the given cosine mean and minimum."""
        return [
            n
            for n in medians
            if n in built
            and built[n][0] == recipe
            and n != "torch-fp32"
            and fidelity[n].cosine_mean >= min_mean
            and fidelity[n].cosine_min >= min_min
        ]

    quant = within("minilm-quant", QUANT_TARGET[1], QUANT_TARGET[2])
    distilled = within("minilm-distill", DISTILL_TARGET[1])
    lines.append("")
    for label, names, target in (
        (f"Quantization only, cos mean >= {QUANT_TARGET[1]} and min >= {QUANT_TARGET[2]}", quant, QUANT_TARGET[0]),
        (f"Distillation + quantization, cos mean >= {DISTILL_TARGET[1]}", distilled, DISTILL_TARGET[0]),
    ):
        if names:
            best = max(names, key=lambda n: medians[n])
            ratio = medians[best] / base
            verdict = "met" if ratio >= target else "missed"
            lines.append(f"- {label}: best {best} at {ratio:.2f}× (target {target}×: {verdict}).")
        else:
            lines.append(f"- {label}: no variant within that fidelity (target {target}×: missed).")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-chain")
    parser.add_argument("--no-write", action="store_true", help="print only; keep the recorded result file")
    args = parser.parse_args()
    built = build(args.out, args.threads)
    print(f"measuring {len(built)} variants and sentence-transformers, {args.rounds} rounds", flush=True)
    medians, fidelity = measure(built, args.rounds, args.threads)
    text = render(built, medians, fidelity, args.rounds, args.threads)
    print(text)
    if not args.no_write:
        RESULT_FILE.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
