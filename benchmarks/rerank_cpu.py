"""The optimizer chain on a reranker the size of ms-marco-MiniLM-L6, against sentence-transformers' CrossEncoder,
on CPU, in one run.

    .venv/bin/python benchmarks/rerank_cpu.py [--recipe cpu] [--threads 2] [--rounds 5]

No trained cross-encoder ships with the project (nothing is downloaded), so the reranker is the bundled MiniLM-L6
encoder under a seeded, untrained one-logit head, saved by sentence-transformers' ``CrossEncoder``: its speed is
that of an ms-marco-MiniLM-L6-v2-sized reranker; its fidelity numbers say how well each candidate keeps a ranking
made from MiniLM's features, not how a trained reranker's relevance holds up. The chain optimizes it with the
recipe given (judged by Kendall tau and top-1 agreement on the held-out (query, document) pairs); then, on those
1,000 pairs, interleaved rounds time ``CrossEncoder.predict`` (batch 32, fp32 torch) and the selected package's
pipeline (the server's: length-sorted batches of 32, its model calls), and print the median throughput of each
and their ratio, with the CPU named. Writes benchmarks/results/rerank_cpu.md.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from corpus import load_split  # noqa: E402
from modelpkg.hardware import detect  # noqa: E402
from modelpkg.pipeline import TextPipeline  # noqa: E402
from optimizers.chain import optimize  # noqa: E402
from optimizers.fidelity import kendall_tau, rerank_pairs  # noqa: E402
from optimizers.report import render_markdown  # noqa: E402
from optimizers.source import bundled_model_dir  # noqa: E402
from serving.api import rerank_scores  # noqa: E402

RESULT_FILE = ROOT / "benchmarks" / "results" / "rerank_cpu.md"
BATCH = 32


def build_reranker(target: Path, seed: int = 0) -> Path:
    """The bundled MiniLM-L6 encoder with a seeded one-logit head, saved as sentence-transformers saves a
    CrossEncoder (Sigmoid activation)."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    raw = target.with_name(target.name + ".hf")
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(bundled_model_dir(), num_labels=1)
    model.save_pretrained(raw, safe_serialization=True)
    AutoTokenizer.from_pretrained(bundled_model_dir()).save_pretrained(raw)
    CrossEncoder(str(raw), activation_fn=torch.nn.Sigmoid()).save_pretrained(str(target))
    shutil.rmtree(raw)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import torch
    from sentence_transformers import CrossEncoder

    work = Path(tempfile.mkdtemp(prefix="rerank-bench-"))
    source = build_reranker(work / "minilm-l6-reranker")
    result = optimize(source, work / "package", recipe=args.recipe, threads=args.threads)
    package, manifest = result.package, result.package.manifest

    pairs = rerank_pairs(load_split("heldout"))
    torch.set_num_threads(args.threads)
    cross_encoder = CrossEncoder(str(source), device="cpu")
    pipeline = TextPipeline.from_package(package, threads=args.threads)
    settings = manifest.serving

    def ours() -> np.ndarray:
        return rerank_scores(pipeline.run_as_served(pairs, settings), manifest.score_activation)

    def theirs() -> np.ndarray:
        return np.asarray(cross_encoder.predict(pairs, batch_size=BATCH, show_progress_bar=False))

    seconds: dict[str, list[float]] = {
        "sentence-transformers CrossEncoder fp32": [],
        f"optiserve {manifest.version}": [],
    }
    outputs = {}
    for _ in range(args.rounds):
        for name, run in zip(seconds, (theirs, ours), strict=True):
            started = time.perf_counter()
            outputs[name] = run()
            seconds[name].append(time.perf_counter() - started)
    rates = {name: len(pairs) / statistics.median(times) for name, times in seconds.items()}
    reference, candidate = (outputs[name].reshape(-1, 8) for name in seconds)
    tau = float(kendall_tau(reference, candidate).mean())
    top1 = float((reference.argmax(1) == candidate.argmax(1)).mean())

    hardware = detect()
    cpu = f"{hardware.cpu_model}, {hardware.cpu_count} cores ({', '.join(hardware.features) or 'none'})"
    base, ratio_name = rates[next(iter(rates))], next(reversed(rates))
    lines = [
        "# Reranker on CPU: the chain against sentence-transformers' CrossEncoder",
        "",
        f"Command: `.venv/bin/python benchmarks/rerank_cpu.py --recipe {args.recipe} --threads {args.threads} "
        f"--rounds {args.rounds}`. CPU: {cpu}. torch {torch.__version__}.",
        "",
        "Model: the bundled MiniLM-L6 encoder under a seeded, untrained one-logit head (an ms-marco-MiniLM-L6-v2-"
        "sized reranker; its rankings are of MiniLM features, not trained relevance). Data: the 1,000 held-out "
        "(query, document) pairs (125 queries of 8 documents).",
        "",
        "| variant | pairs/s (median of rounds) | × CrossEncoder |",
        "|---|---|---|",
        *(f"| {name} | {rate:.0f} | {rate / base:.2f} |" for name, rate in rates.items()),
        "",
        f"The selected package against CrossEncoder's scores on the same pairs: Kendall tau {tau:.4f}, top-1 "
        f"agreement {top1:.3f}. {ratio_name}: {manifest.runtime} {manifest.precision}.",
        "",
        "## The chain's report",
        "",
        re.sub(r"^(#+) ", r"##\1 ", render_markdown(result.report), flags=re.MULTILINE),
    ]
    RESULT_FILE.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines[:14]))
    print(f"written to {RESULT_FILE}")


if __name__ == "__main__":
    main()
