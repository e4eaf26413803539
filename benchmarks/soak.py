"""Bounded soak: serve the optimized package under mixed Locust load (1..16 inputs per request) for a fixed
time, and report memory growth, errors and latency drift per window, from the server's own metrics.

    .venv/bin/python benchmarks/soak.py --minutes 10            # writes runs/soak/soak.json and soak.md

The package is built first (optiserve optimize) if runs/soak/package does not exist. Locust runs on the same
cores as the server.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

from loadtests.runner import LoadTestConfig, start_locust, wait_locust
from loadtests.scrape import histogram_delta, requests_by_code, scrape
from optimizers.chain import optimize
from optimizers.source import bundled_model_dir
from serving.launcher import start
from serving.ports import free_port

REPLICA_TITLE = "ServeReplica:optiserve:InferenceService"
PROXY_TITLE = "ProxyActor"


def _rss_mb(title: str) -> float:
    total = 0.0
    for proc in psutil.process_iter(["cmdline", "memory_info"]):
        if any(title in part for part in proc.info["cmdline"] or []) and proc.info["memory_info"]:
            total += proc.info["memory_info"].rss / 1e6
    return total


def _window(before: dict, after: dict, seconds: float) -> dict[str, Any]:
    codes = requests_by_code(before, after, "/v1/embeddings")
    latency = histogram_delta(before, after, "optiserve_request_duration_seconds", {"route": "/v1/embeddings"})
    items = histogram_delta(before, after, "optiserve_batch_size").total
    return {
        "requests": sum(codes.values()),
        "errors": sum(v for k, v in codes.items() if k != "200"),
        "rps": sum(codes.values()) / seconds,
        "items_per_s": items / seconds,
        "p50_ms": latency.quantile(0.5) * 1e3,
        "p99_ms": latency.quantile(0.99) * 1e3,
        "replica_rss_mb": _rss_mb(REPLICA_TITLE),
        "proxy_rss_mb": _rss_mb(PROXY_TITLE),
    }


def render(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = [
        f"# Soak: {result['minutes']} min, {result['users']} users, 1..{result['max_inputs']} inputs per request",
        "",
        f"Requests {s['requests']:.0f}, errors {s['errors']:.0f}; replica memory {s['rss_start_mb']:.0f} -> "
        f"{s['rss_end_mb']:.0f} MB ({s['rss_growth_pct']:+.1f}%); "
        f"p50 {s['p50_first_ms']:.1f} -> {s['p50_last_ms']:.1f} ms, "
        f"p99 {s['p99_first_ms']:.1f} -> {s['p99_last_ms']:.1f} ms (first vs last steady window, server side).",
        "",
        "| window end s | req/s | items/s | errors | p50 ms | p99 ms | replica RSS MB | proxy RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for w in result["windows"]:
        lines.append(
            f"| {w['t_s']:.0f} | {w['rps']:.1f} | {w['items_per_s']:.0f} | {w['errors']:.0f} | {w['p50_ms']:.1f} | "
            f"{w['p99_ms']:.1f} | {w['replica_rss_mb']:.0f} | {w['proxy_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def soak(out: Path, minutes: float, users: int, max_inputs: int, window_s: float) -> dict[str, Any]:
    package = out / "package"
    if not (package / "manifest.json").exists():
        optimize(bundled_model_dir(), package)
    server = start(port=free_port())
    windows = []
    try:
        server.deploy(package)
        cfg = LoadTestConfig(
            host=server.url, out_dir=out, users=users, duration_s=int(minutes * 60), max_inputs=max_inputs, label="soak"
        )
        metrics_url = f"{server.url}/metrics"
        started = time.monotonic()
        proc = start_locust(cfg)
        previous, previous_t = scrape(metrics_url), started
        while proc.poll() is None:
            time.sleep(window_s)
            now, current = time.monotonic(), scrape(metrics_url)
            window = _window(previous, current, now - previous_t)
            window["t_s"] = now - started
            windows.append(window)
            print(
                f"{window['t_s']:6.0f} s  {window['rps']:6.1f} req/s  errors {window['errors']:.0f}  "
                f"p99 {window['p99_ms']:.1f} ms  replica {window['replica_rss_mb']:.0f} MB",
                flush=True,
            )
            previous, previous_t = current, now
        wait_locust(proc, cfg)
    finally:
        server.stop()
    steady = windows[1:-1] if len(windows) >= 3 else windows  # skip warm-up and ramp-down windows
    first, last = steady[0], steady[-1]
    summary = {
        "requests": sum(w["requests"] for w in windows),
        "errors": sum(w["errors"] for w in windows),
        "rss_start_mb": first["replica_rss_mb"],
        "rss_end_mb": last["replica_rss_mb"],
        "rss_growth_pct": 100 * (last["replica_rss_mb"] / first["replica_rss_mb"] - 1),
        "p50_first_ms": first["p50_ms"],
        "p50_last_ms": last["p50_ms"],
        "p99_first_ms": first["p99_ms"],
        "p99_last_ms": last["p99_ms"],
    }
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
    result = {
        "minutes": minutes,
        "users": users,
        "max_inputs": max_inputs,
        "commit": commit or "unknown",
        "windows": windows,
        "summary": summary,
    }
    (out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "soak.md").write_text(render(result) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--inputs", type=int, default=16, help="each request carries 1..N sentences")
    parser.add_argument("--window", type=float, default=30.0, help="seconds per reported window")
    parser.add_argument("--out", type=Path, default=Path("runs/soak"))
    args = parser.parse_args()
    print(render(soak(args.out, args.minutes, args.users, args.inputs, args.window)))


if __name__ == "__main__":
    main()
