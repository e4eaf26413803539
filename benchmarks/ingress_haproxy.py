"""Evaluate Ray Serve's HAProxy ingress (``RAY_SERVE_ENABLE_HA_PROXY=1``, through ``serving/haproxy-local``)
against Ray's Python proxy for optiserve, and check what it leaves behind: the addresses it listens on, and
HAProxy processes alive after their managing actor is SIGKILLed (as ``ray stop --force`` does) and after shutdown.

    .venv/bin/python benchmarks/ingress_haproxy.py [--users 8] [--duration 20]

Each ingress runs in a fresh process with its own Ray instance (the choice is read when Serve starts), one after
the other, serving the same optimized package under the same single-sentence Locust load. Writes
``runs/bench-ingress/ingress.json`` and copies a Markdown summary to ``benchmarks/results/ingress_haproxy.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.request_path import locust  # noqa: E402
from benchmarks.serving_cpu import ensure_package  # noqa: E402
from corpus import load_split  # noqa: E402

RESULT_FILE = ROOT / "benchmarks" / "results" / "ingress_haproxy.md"


def haproxy_processes() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name", "cmdline"]) if "haproxy" in (p.info["name"] or "")]


def listening(processes: list[psutil.Process]) -> list[str]:
    sockets = set()
    for proc in processes:
        try:
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    sockets.add(f"{conn.laddr.ip}:{conn.laddr.port}")
        except psutil.Error:
            continue
    return sorted(sockets)


def child(variant: str, package: Path, out: Path, users: int, duration: int) -> dict[str, Any]:
    from serving.launcher import start
    from serving.ports import free_port

    server = start("127.0.0.1", free_port(), num_cpus=2, threads=1, ingress=variant)
    try:
        server.deploy(package)
        texts_file = out / "heldout.json"
        texts_file.write_text(json.dumps(load_split("heldout")))
        stats = locust(server.url, texts_file, users, duration)
        sockets = listening(haproxy_processes())
        # What `ray stop --force` does to HAProxy's manager: SIGKILL. Its HAProxy must not outlive it.
        before_kill = haproxy_processes()
        for proc in psutil.process_iter(["cmdline"]):
            if any("HAProxyManager" in part for part in proc.info["cmdline"] or []):
                proc.kill()
        time.sleep(3)
        orphans = [p for p in before_kill if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    finally:
        server.stop()
    time.sleep(5)
    left = haproxy_processes()
    result = {
        "variant": variant,
        "client": stats,
        "haproxy_listening": sockets,
        "haproxy_alive_after_manager_sigkill": len(orphans),
        "haproxy_alive_after_stop": len(left),
    }
    for proc in left:  # do not leave them to the next run
        proc.kill()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-ingress"))
    parser.add_argument("--variant", choices=["proxy", "haproxy"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    package = ensure_package(out)
    if args.variant:
        result = child(args.variant, package, out, args.users, args.duration)
        (out / f"{args.variant}.json").write_text(json.dumps(result, indent=2) + "\n")
        return 0
    results = {}
    for variant in ("proxy", "haproxy"):
        cmd = [sys.executable, __file__, "--variant", variant, "--out", str(out)]
        cmd += ["--users", str(args.users), "--duration", str(args.duration)]
        subprocess.run(cmd, check=True, timeout=args.duration + 600)
        results[variant] = json.loads((out / f"{variant}.json").read_text())
    ratio = results["haproxy"]["client"]["rps"] / results["proxy"]["client"]["rps"]
    lines = [
        "# Ray Serve ingress: HAProxy vs the Python proxy (optiserve, CPU)",
        "",
        f"Command: `python benchmarks/ingress_haproxy.py --users {args.users} --duration {args.duration}`  ",
        f"When: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; single-sentence requests, Locust on the "
        "same 2 cores.",
        "",
        "| ingress | req/s | p50 ms | p99 ms | failures | haproxy listening on | haproxy alive after its manager "
        "is SIGKILLed | after stop |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        c = r["client"]
        lines.append(
            f"| {name} | {c['rps']:.1f} | {c['p50_ms']:.0f} | {c['p99_ms']:.0f} | {c['failures']:.0f} | "
            f"{', '.join(r['haproxy_listening']) or '-'} | {r['haproxy_alive_after_manager_sigkill']} | "
            f"{r['haproxy_alive_after_stop']} |"
        )
    lines += ["", f"HAProxy / Python proxy throughput: {ratio:.2f}", ""]
    (out / "ingress.json").write_text(json.dumps({"results": results, "ratio": ratio}, indent=2) + "\n")
    RESULT_FILE.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
