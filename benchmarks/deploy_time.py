"""How long `optiserve deploy` and `optiserve rollback` take for the default package, and where the time goes.

    .venv/bin/python benchmarks/deploy_time.py                  # writes runs/deploy/deploy.json and .md

Serves the default package (`make demo`'s optimized one, else the default recipe on the bundled MiniLM, built
into runs/soak/package as benchmarks/soak.py does) with 2 single-thread replicas, then alternates a deploy of a
copy of it (another path: every replica loads, verifies, warms up and swaps in a new model, then drains the old
one) and a rollback, ``--rounds`` times, with a light closed-loop load running (2 clients, one sentence per
request) so drains have something to finish. Per change: the total (the command's wait, from the application
update until every replica reports the new package with nothing left loading or draining), and the slowest
replica's load + warm-up and drain, as the replicas report them. Copies the Markdown to benchmarks/results/deploy.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.request_path import cpu_description  # noqa: E402
from benchmarks.soak import DEFAULT_PACKAGE, default_package  # noqa: E402
from serving import control  # noqa: E402
from serving.launcher import start  # noqa: E402
from serving.ports import free_port  # noqa: E402

RESULT_FILE = ROOT / "benchmarks" / "results" / "deploy.md"


def _slowest(outcome: control.Outcome, key: str) -> float:
    values = [m["last_change"].get(key, 0.0) for r in outcome.replicas for m in r["models"].values()]
    return max(values, default=0.0)


def _load(url: str, stop: threading.Event, statuses: list[int]) -> None:
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            statuses.append(client.post(f"{url}/v1/embeddings", json={"input": "a sentence to embed"}).status_code)


def run(out: Path, package: Path, rounds: int) -> dict[str, Any]:
    copy = out / "package-copy"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(package, copy)
    server = start(port=free_port(), threads=1)
    changes: list[dict[str, Any]] = []
    statuses: list[int] = []
    stop = threading.Event()
    try:
        server.deploy(package, num_replicas=2)
        clients = [threading.Thread(target=_load, args=(server.url, stop, statuses)) for _ in range(2)]
        for client in clients:
            client.start()
        for _ in range(rounds):
            for what, action in (("deploy", lambda: control.deploy([copy])), ("rollback", control.rollback)):
                _, outcome = action()
                changes.append(
                    {
                        "change": what,
                        "total_s": outcome.seconds,
                        "load_and_warm_up_s": _slowest(outcome, "load_and_warm_up_s"),
                        "drain_s": _slowest(outcome, "drain_s"),
                    }
                )
                print(json.dumps(changes[-1]), flush=True)
        stop.set()
        for client in clients:
            client.join()
    finally:
        stop.set()
        server.stop()
    manifest = json.loads((package / "manifest.json").read_text())
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
    return {
        "command": "python benchmarks/deploy_time.py " + " ".join(sys.argv[1:]),
        "machine": f"{cpu_description()}, {psutil.cpu_count()} cores",
        "commit": commit,
        "package": {
            "runtime": manifest["runtime"],
            "precision": manifest["precision"],
            "chain": manifest["chain"][-1]["name"] if manifest["chain"] else "none",
        },
        "requests_during": len(statuses),
        "failed_during": sum(1 for s in statuses if s != 200),
        "changes": changes,
    }


def render(result: dict[str, Any]) -> str:
    def median(change: str, key: str) -> float:
        return statistics.median(c[key] for c in result["changes"] if c["change"] == change)

    lines = [
        "# Deploy time: the default package",
        "",
        f"Command: `{result['command']}` (commit {result['commit']}); machine: {result['machine']}. Package: "
        f"{result['package']['runtime']} {result['package']['precision']}, 2 single-thread replicas, 2 clients "
        f"sending single sentences throughout: {result['requests_during']} requests, {result['failed_during']} failed.",
        "",
        "| change | total s (median) | load + warm-up s, slowest replica | drain s, slowest replica |",
        "|---|---|---|---|",
    ]
    for change in ("deploy", "rollback"):
        lines.append(
            f"| {change} | {median(change, 'total_s'):.2f} | {median(change, 'load_and_warm_up_s'):.2f} | "
            f"{median(change, 'drain_s'):.2f} |"
        )
    lines += ["", "Every change:", "", "| change | total s | load + warm-up s | drain s |", "|---|---|---|---|"]
    for c in result["changes"]:
        lines.append(f"| {c['change']} | {c['total_s']:.2f} | {c['load_and_warm_up_s']:.2f} | {c['drain_s']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/deploy"))
    parser.add_argument("--package", type=Path, default=DEFAULT_PACKAGE, help="(built if missing)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = run(args.out, default_package(args.package), args.rounds)
    (args.out / "deploy.json").write_text(json.dumps(result, indent=2) + "\n")
    text = render(result)
    (args.out / "deploy.md").write_text(text + "\n")
    RESULT_FILE.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
