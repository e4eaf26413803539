"""Soak with day-2 changes: serve the optimized package at half its measured knee, mixed request sizes (1..N
inputs), for a fixed time, with one upgrade (to a copy of the package at another path: every replica loads, warms
up and swaps in a new model, then drains the old one) a third of the way in and one rollback two thirds in.
Reports failed requests, memory growth after warm-up, and open files and threads per replica process before
and after each change, from the server's own metrics and /proc.

    .venv/bin/python benchmarks/soak.py --minutes 60            # writes runs/soak/soak.json and soak.md

The response cache is off (the load repeats the held-out set: with it, most answers would be cache hits). The
knee: the requests/s of a closed-loop Locust run (16 users, 20 s) on the same mixed load. The package: `make
demo`'s optimized one (the default recipe), else the default recipe is run into runs/soak/package first. Locust
runs on the same cores as the server.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.request_path import cpu_description  # noqa: E402
from loadtests.runner import LoadTestConfig, final_stats, run_loadtest, start_locust, wait_locust  # noqa: E402
from loadtests.scrape import histogram_delta, requests_by_code, scrape  # noqa: E402
from optimizers.chain import optimize  # noqa: E402
from optimizers.source import bundled_model_dir  # noqa: E402
from serving import control  # noqa: E402
from serving.launcher import start  # noqa: E402
from serving.ports import free_port  # noqa: E402

REPLICA_TITLE = "ServeReplica:optiserve:InferenceService"
PROXY_TITLE = "ProxyActor"
DEFAULT_PACKAGE = ROOT / "runs" / "demo" / "packages" / "optimized"
KNEE_USERS = 16
WARM_UP_S = 300.0  # memory is compared from the first window after this
KNEE_S = 20


def _processes(title: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(title in part for part in proc.info["cmdline"] or []):
            found.append(proc)
    return found


def _usage(title: str) -> dict[str, float]:
    """Summed RSS (MB), and open files and threads per process (the largest), of the processes named ``title``."""
    rss, fds, threads = 0.0, 0, 0
    for proc in _processes(title):
        try:
            rss += proc.memory_info().rss / 1e6
            fds = max(fds, proc.num_fds())
            threads = max(threads, proc.num_threads())
        except psutil.Error:
            continue
    return {"rss_mb": rss, "fds": fds, "threads": threads}


def _window(before: dict, after: dict, seconds: float) -> dict[str, Any]:
    codes = requests_by_code(before, after, "/v1/embeddings")
    latency = histogram_delta(before, after, "optiserve_request_duration_seconds", {"route": "/v1/embeddings"})
    items = histogram_delta(before, after, "optiserve_batch_size").total
    replica = _usage(REPLICA_TITLE)
    return {
        "requests": sum(codes.values()),
        "errors": sum(v for k, v in codes.items() if k != "200"),
        "rps": sum(codes.values()) / seconds,
        "items_per_s": items / seconds,
        "p50_ms": latency.quantile(0.5) * 1e3,
        "p99_ms": latency.quantile(0.99) * 1e3,
        "replica_rss_mb": replica["rss_mb"],
        "replica_fds": replica["fds"],
        "replica_threads": replica["threads"],
        "proxy_rss_mb": _usage(PROXY_TITLE)["rss_mb"],
    }


def render(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = [
        f"# Soak: {result['minutes']} min at half the knee ({result['rate']:.1f} of {result['knee_rps']:.1f} req/s), "
        f"1..{result['max_inputs']} inputs per request, an upgrade and a rollback",
        "",
        f"Command: `{result['command']}` (commit {result['commit']}); machine: {result['machine']}.",
        "",
        f"Requests {s['requests']:.0f} (Locust {s['locust_requests']:.0f}), failed {s['failed']:.0f}; replica memory "
        f"{s['rss_start_mb']:.0f} -> {s['rss_end_mb']:.0f} MB ({s['rss_growth_pct']:+.1f}%, first window after "
        f"{s['warm_up_s']:.0f} s of warm-up to the last; at most {s['rss_max_mb']:.0f} MB); "
        f"p50 {s['p50_first_ms']:.1f} -> {s['p50_last_ms']:.1f} ms, p99 {s['p99_first_ms']:.1f} -> "
        f"{s['p99_last_ms']:.1f} ms (server side).",
        "",
        "| change | at s | took s | replica open files before -> after | threads before -> after |",
        "|---|---|---|---|---|",
    ]
    for change in result["changes"]:
        lines.append(
            f"| {change['what']} | {change['at_s']:.0f} | {change['seconds']:.1f} | {change['fds_before']} -> "
            f"{change['fds_after']} | {change['threads_before']} -> {change['threads_after']} |"
        )
    lines += [
        "",
        "| window end s | req/s | items/s | errors | p50 ms | p99 ms | replica RSS MB | open files | threads |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for w in result["windows"]:
        lines.append(
            f"| {w['t_s']:.0f} | {w['rps']:.1f} | {w['items_per_s']:.0f} | {w['errors']:.0f} | {w['p50_ms']:.1f} | "
            f"{w['p99_ms']:.1f} | {w['replica_rss_mb']:.0f} | {w['replica_fds']} | {w['replica_threads']} |"
        )
    return "\n".join(lines)


def _change(what: str, started: float, action: Any) -> dict[str, Any]:
    before = _usage(REPLICA_TITLE)
    at = time.monotonic() - started
    began = time.monotonic()
    action()
    took = time.monotonic() - began
    time.sleep(5)  # the old model's thread and files are released after its drain
    after = _usage(REPLICA_TITLE)
    print(f"{at:6.0f} s  {what} in {took:.1f} s", flush=True)
    return {
        "what": what,
        "at_s": at,
        "seconds": took,
        "fds_before": before["fds"],
        "fds_after": after["fds"],
        "threads_before": before["threads"],
        "threads_after": after["threads"],
    }


def default_package(path: Path) -> Path:
    """``path`` if it holds a package (``make demo`` writes the default one to runs/demo/packages/optimized),
    else the default recipe on the bundled model, written to runs/soak/package once."""
    if (path / "manifest.json").exists():
        return path
    built = ROOT / "runs" / "soak" / "package"
    if not (built / "manifest.json").exists():
        optimize(bundled_model_dir(), built)
    return built


def summarize(windows: list[dict[str, Any]], locust_requests: float, locust_failures: float) -> dict[str, Any]:
    """Totals, and memory and latency from the first window after warm-up (``WARM_UP_S``: the replicas' memory
    grows while allocators and kernels settle) to the last full one."""
    steady = [w for w in windows[:-1] if w["t_s"] >= WARM_UP_S] or windows
    first, last = steady[0], steady[-1]
    return {
        "requests": sum(w["requests"] for w in windows),
        "locust_requests": locust_requests,
        "failed": locust_failures + sum(w["errors"] for w in windows),
        "warm_up_s": WARM_UP_S,
        "rss_start_mb": first["replica_rss_mb"],
        "rss_end_mb": last["replica_rss_mb"],
        "rss_growth_pct": 100 * (last["replica_rss_mb"] / first["replica_rss_mb"] - 1),
        "rss_max_mb": max(w["replica_rss_mb"] for w in steady),
        "p50_first_ms": first["p50_ms"],
        "p50_last_ms": last["p50_ms"],
        "p99_first_ms": first["p99_ms"],
        "p99_last_ms": last["p99_ms"],
    }


def soak(out: Path, package: Path, minutes: float, max_inputs: int, window_s: float, fraction: float) -> dict[str, Any]:
    upgrade = out / "package-v2"
    shutil.rmtree(upgrade, ignore_errors=True)
    shutil.copytree(package, upgrade)
    server = start(port=free_port())
    windows: list[dict[str, Any]] = []
    changes: list[dict[str, Any]] = []
    try:
        server.deploy(package, {"cache_mb": 0})  # the load repeats its held-out sentences: no cache, real work
        knee = run_loadtest(
            LoadTestConfig(host=server.url, out_dir=out, users=KNEE_USERS, duration_s=KNEE_S, max_inputs=max_inputs,
                           plots=False, label="knee")
        )  # fmt: skip
        knee_rps = knee.client["rps"]
        rate = fraction * knee_rps
        cfg = LoadTestConfig(host=server.url, out_dir=out, users=KNEE_USERS, duration_s=int(minutes * 60),
                             max_inputs=max_inputs, rate=rate, plots=False, label="soak")  # fmt: skip
        metrics_url = f"{server.url}/metrics"
        started = time.monotonic()
        proc = start_locust(cfg)
        previous, previous_t = scrape(metrics_url), started
        pending = [(minutes * 60 / 3, "upgrade"), (2 * minutes * 60 / 3, "rollback")]
        while proc.main.poll() is None:
            time.sleep(window_s)
            if pending and time.monotonic() - started >= pending[0][0]:
                what = pending.pop(0)[1]
                action = (lambda: control.deploy([upgrade])) if what == "upgrade" else control.rollback
                changes.append(_change(what, started, action))
            now, current = time.monotonic(), scrape(metrics_url)
            window = _window(previous, current, now - previous_t)
            window["t_s"] = now - started
            windows.append(window)
            print(
                f"{window['t_s']:6.0f} s  {window['rps']:6.1f} req/s  errors {window['errors']:.0f}  "
                f"p99 {window['p99_ms']:.1f} ms  replica {window['replica_rss_mb']:.0f} MB "
                f"{window['replica_fds']} files {window['replica_threads']} threads",
                flush=True,
            )
            previous, previous_t = current, now
        wait_locust(proc, cfg)
        client = final_stats(Path(f"{cfg.json_prefix}.json"))
    finally:
        server.stop()
    summary = summarize(windows, client["requests"], client["failures"])
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
    result = {
        "minutes": minutes,
        "max_inputs": max_inputs,
        "knee_rps": knee_rps,
        "rate": rate,
        "command": "python benchmarks/soak.py " + " ".join(sys.argv[1:]),
        "machine": f"{cpu_description()}, {psutil.cpu_count()} cores",
        "commit": commit or "unknown",
        "changes": changes,
        "windows": windows,
        "summary": summary,
    }
    (out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "soak.md").write_text(render(result) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--inputs", type=int, default=8, help="each request carries 1..N sentences")
    parser.add_argument("--fraction", type=float, default=0.5, help="the load's share of the knee's requests/s")
    parser.add_argument("--window", type=float, default=30.0, help="seconds per reported window")
    parser.add_argument("--out", type=Path, default=Path("runs/soak"))
    parser.add_argument("--package", type=Path, default=DEFAULT_PACKAGE, help="(built if missing)")
    parser.add_argument("--render", type=Path, metavar="SOAK_JSON", help="only summarize and render a finished run")
    args = parser.parse_args()
    if args.render:
        result = json.loads(args.render.read_text())
        s = result["summary"]
        errors = sum(w["errors"] for w in result["windows"])
        result["summary"] = summarize(result["windows"], s["locust_requests"], s["failed"] - errors)
        args.render.write_text(json.dumps(result, indent=2) + "\n")
        args.render.with_suffix(".md").write_text(render(result) + "\n")
        print(render(result))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    package = default_package(args.package)
    print(render(soak(args.out, package, args.minutes, args.inputs, args.window, args.fraction)))


if __name__ == "__main__":
    main()
