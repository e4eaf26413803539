"""Where tokenization should run: its cost next to the model's, per dynamic batch, on the optimized package.

    .venv/bin/python benchmarks/tokenization.py [--package runs/demo/packages/optimized]

Measures, over held-out sentences in batches of the package's max_batch_size (median of 30 rounds, 1 thread):
tokenizing the batch at once (``encode_batch``, as the replica's worker thread does now), tokenizing each text
on its own (as a request handler on the event loop would, one request at a time), and the whole batch through
the pipeline (tokenize + pad + model). Prints the shares and copies them to benchmarks/results/tokenization.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from corpus import load_split  # noqa: E402
from modelpkg.package import load_package  # noqa: E402
from modelpkg.pipeline import TextPipeline  # noqa: E402

RESULT_FILE = ROOT / "benchmarks" / "results" / "tokenization.md"


def timed(fn: object, rounds: int = 30) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, default=Path("runs/demo/packages/optimized"))
    args = parser.parse_args()
    package = load_package(args.package)
    settings = package.manifest.serving
    pipeline = TextPipeline.from_package(package, threads=1)
    texts = load_split("heldout")[: settings.max_batch_size]
    pipeline.run(texts)  # warm-up
    batch_ms = timed(lambda: pipeline.encoder.encode(texts))
    single_ms = timed(lambda: [pipeline.encoder.encode([t]) for t in texts])
    total_ms = timed(lambda: pipeline.run(texts, settings.max_call_items, settings.max_batch_tokens))
    lines = [
        "# Tokenization vs model time per dynamic batch (CPU, 1 thread)",
        "",
        f"Command: `python benchmarks/tokenization.py --package {args.package}`; package "
        f"{package.manifest.name} {package.manifest.version}; batches of {len(texts)} held-out sentences; "
        "medians of 30 rounds.",
        "",
        "| step | ms per batch | share of the batch's pipeline time |",
        "|---|---|---|",
        f"| tokenize the batch at once (encode_batch, now) | {batch_ms:.2f} | {batch_ms / total_ms:.1%} |",
        f"| tokenize each text alone (per request) | {single_ms:.2f} | {single_ms / total_ms:.1%} |",
        f"| whole pipeline (tokenize + pad + model) | {total_ms:.2f} | 100% |",
        "",
    ]
    RESULT_FILE.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
