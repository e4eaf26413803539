"""Adaptive batch wait vs a fixed wait, on one server under the same Locust load, interleaved.

    .venv/bin/python benchmarks/adaptive_wait.py [--rounds 2] [--users 8] [--duration 15] [--inputs 4]

Serves the optimized package (built first if ``<out>/package`` is missing) and alternates its ``user_config``
between ``adaptive_wait: true`` and ``false`` (fixed ``batch_wait_timeout_s``) -- a live reconfigure, no restart
-- running the same Locust load after each switch. Prints the medians per setting and their ratios, and copies
the Markdown to ``benchmarks/results/adaptive_wait.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.serving_cpu import ensure_package  # noqa: E402
from loadtests.runner import LoadTestConfig, run_loadtest  # noqa: E402

RESULT_FILE = ROOT / "benchmarks" / "results" / "adaptive_wait.md"
SETTINGS = {"adaptive": {"adaptive_wait": True}, "fixed": {"adaptive_wait": False}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--inputs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-wait"))
    args = parser.parse_args()
    out = args.out.resolve()
    package = ensure_package(out)

    from serving.launcher import start
    from serving.ports import free_port

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SETTINGS}
    server = start("127.0.0.1", free_port(), num_cpus=2, threads=1)
    try:
        for round_ in range(args.rounds):
            for name, overrides in SETTINGS.items():
                server.deploy(package, overrides)  # user_config only: reconfigured in place
                summary = run_loadtest(
                    LoadTestConfig(
                        host=server.url, out_dir=out, users=args.users, duration_s=args.duration,
                        max_inputs=args.inputs, plots=False, label=f"{name}-{round_}",
                    )
                )  # fmt: skip
                runs[name].append({**summary.client, "batch_size_mean": summary.server["batch_size_mean"]})
    finally:
        server.stop()

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    keys = ("rps", "p50_ms", "p99_ms", "batch_size_mean")
    table = {name: {key: median(name, key) for key in keys} for name in SETTINGS}
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT)
    lines = [
        "# Adaptive vs fixed batch wait (CPU)",
        "",
        f"Command: `python benchmarks/adaptive_wait.py --rounds {args.rounds} --users {args.users} "
        f"--duration {args.duration} --inputs {args.inputs}`  ",
        f"Commit {commit.stdout.strip()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; medians of "
        f"{args.rounds} interleaved rounds; Locust on the same 2 cores; 1..{args.inputs} sentences per request.",
        "",
        "| wait | req/s | p50 ms | p99 ms | mean batch (items) |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {t['rps']:.1f} | {t['p50_ms']:.0f} | {t['p99_ms']:.0f} | {t['batch_size_mean']:.2f} |"
            for name, t in table.items()
        ),
        "",
        f"adaptive / fixed: throughput x{table['adaptive']['rps'] / table['fixed']['rps']:.2f}, "
        f"p50 x{table['adaptive']['p50_ms'] / table['fixed']['p50_ms']:.2f}, "
        f"p99 x{table['adaptive']['p99_ms'] / table['fixed']['p99_ms']:.2f}",
        "",
    ]
    (out / "adaptive_wait.json").write_text(json.dumps({"runs": runs, "medians": table}, indent=2) + "\n")
    RESULT_FILE.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
