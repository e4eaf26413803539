"""How a dynamic batch is cut into model calls, side by side on one replica thread: calls filled to the package's
limits (sorted by length, padded to the longest) against calls cut by what a call costs (the replica's
calibration, ``modelpkg.pipeline.measure_call_cost``). Random held-out sentences in batches of 2..32, as single-sentence
requests make them; the package's own ``max_call_items`` / ``max_batch_tokens``; median of interleaved rounds.

    .venv/bin/python benchmarks/call_planning.py [--package DIR] [--rounds 3] [--result FILE]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from corpus import load_split  # noqa: E402
from modelpkg.hardware import detect  # noqa: E402
from modelpkg.package import load_package  # noqa: E402
from modelpkg.pipeline import CALIBRATION_ITEMS, TextPipeline, measure_call_cost  # noqa: E402
from serving.replica import PROBE_TEXT  # noqa: E402

BATCH_SIZES = (2, 6, 16, 32)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--package", type=Path, default=ROOT / "runs" / "demo" / "packages" / "optimized")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--result", type=Path, help="a Markdown file to write")
    args = parser.parse_args()
    package = load_package(args.package)
    pipeline = TextPipeline.from_package(package, threads=1)
    settings = package.manifest.serving
    work, _ = measure_call_cost(pipeline, PROBE_TEXT, CALIBRATION_ITEMS)  # as a replica calibrates
    cost = work.call_in_units
    texts = load_split("heldout")
    rng = np.random.default_rng(0)
    lines = [
        "| batch | calls filled: items/s | padded tokens / item | calls | cut by cost: items/s | padded tokens / item "
        "| calls | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size in BATCH_SIZES:
        batches = [[texts[i] for i in rng.choice(len(texts), size, replace=False)] for _ in range(max(10, 600 // size))]
        measured: dict[str, list[tuple[float, float, float]]] = {"filled": [], "cost": []}
        for _ in range(args.rounds):
            for label, call_cost in (("filled", None), ("cost", cost)):
                pipeline.call_cost_tokens = call_cost
                padding = calls = 0
                started = time.perf_counter()
                for batch in batches:
                    _, stats = pipeline.run(batch, settings.max_call_items, settings.max_batch_tokens)
                    padding += stats.padded_tokens - stats.real_tokens
                    calls += len(stats.call_padded_tokens)
                rate = len(batches) * size / (time.perf_counter() - started)
                measured[label].append((rate, padding / (len(batches) * size), calls / len(batches)))
        row = {k: (statistics.median(r[0] for r in v), v[0][1], v[0][2]) for k, v in measured.items()}
        (fr, fp, fc), (cr, cp, cc) = row["filled"], row["cost"]
        lines.append(f"| {size} | {fr:.0f} | {fp:.1f} | {fc:.1f} | {cr:.0f} | {cp:.1f} | {cc:.1f} | x{cr / fr:.2f} |")
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT)
    head = [
        "# Model calls cut by their cost vs filled (one replica thread)",
        "",
        f"Command: `.venv/bin/python benchmarks/call_planning.py {' '.join(sys.argv[1:])}` "
        f"at {commit.stdout.strip()}  ",
        f"CPU: {detect().describe()}; package: {package.manifest.name} {package.manifest.version} "
        f"(max_call_items {settings.max_call_items}, max_batch_tokens {settings.max_batch_tokens})  ",
        f"Calibrated: {work.overhead_s * 1e3:.2f} ms per call, {work.seconds_per_unit * 1e6:.0f} us per token: "
        f"a call costs {cost:.1f} tokens",
        "",
    ]
    text = "\n".join([*head, *lines, ""])
    print(text)
    if args.result:
        args.result.write_text(text)


if __name__ == "__main__":
    main()
