"""Goodput sweep: step the number of users, hold each step until its throughput is stable, and find the knee --
the highest throughput whose p99 stays within the SLO (without an SLO: the step with the most throughput per
millisecond of p99, Kleinrock's "power").

The stepping runs inside Locust (``loadtests/shapes.py:SweepShape``), so no user restarts between steps.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from loadtests import settings
from loadtests.runner import LoadTestConfig, LoadTestSummary, run_loadtest

SWEEP_LEGEND = {
    "users": "concurrent Locust users of the step (closed loop: each sends its next request when the last returns)",
    "req/s": "completed requests per second over the step's stable windows (client)",
    "p50 / p99 ms per request": "client-side latency percentiles of one whole request over those windows",
    "server p99 ms per request": "the server's own request-duration histogram over the same windows (optiserve "
    "/metrics; — when the server has none)",
    "failures": "requests in those windows that were not HTTP 200 with one output per input",
    "stable": "yes: throughput settled within the tolerance before the step's time cap",
    "seconds": "how long the step lasted, warm-up window included",
}


def find_knee(steps: list[dict[str, Any]], slo_p99_ms: float | None) -> int | None:
    """Index of the knee among steps without failures, or None if no step qualifies."""
    candidates = [i for i, s in enumerate(steps) if s["failures"] == 0 and s["rps"] > 0 and s["p99_ms"] == s["p99_ms"]]
    if slo_p99_ms is not None:
        within = [i for i in candidates if steps[i]["p99_ms"] <= slo_p99_ms]
        return max(within, key=lambda i: steps[i]["rps"], default=None)
    return max(candidates, key=lambda i: steps[i]["rps"] / max(steps[i]["p99_ms"], 1e-9), default=None)


def run_sweep(
    cfg: LoadTestConfig,
    levels: list[int],
    slo_p99_ms: float | None = None,
    window_s: float = 3.0,
    max_step_s: float = 30.0,
) -> dict[str, Any]:
    """Run the sweep against ``cfg.host`` and write ``<label>_sweep.json``, ``.md`` and ``.png``."""
    from loadtests.plots import plot_sweep

    steps_file = cfg.out_dir / f"{cfg.label}_steps.json"
    steps_file.unlink(missing_ok=True)
    env = {
        **cfg.env,
        settings.SWEEP_SERVER_METRICS.name: "1" if cfg.server_metrics else "0",
        "OPTISERVE_SWEEP_USERS": ",".join(str(n) for n in levels),
        "OPTISERVE_SWEEP_WINDOW_S": str(window_s),
        "OPTISERVE_SWEEP_MAX_STEP_S": str(max_step_s),
        "OPTISERVE_SWEEP_OUT": str(steps_file),
    }
    bound = int(len(levels) * (max_step_s + window_s) + 10)
    summary: LoadTestSummary = run_loadtest(
        replace(cfg, shape="sweep", env=env, duration_s=bound, slo_p99_ms=None, max_error_rate=None)
    )
    steps = json.loads(steps_file.read_text()) if steps_file.exists() else []
    knee = find_knee(steps, slo_p99_ms)
    result = {
        "label": cfg.label,
        "levels": levels,
        "slo_p99_ms": slo_p99_ms,
        "steps": steps,
        "knee": knee,
        "goodput_rps": steps[knee]["rps"] if knee is not None else 0.0,
        "run": asdict(summary),
    }
    png = plot_sweep(steps, knee, cfg.out_dir / f"{cfg.label}_sweep.png", slo_p99_ms) if steps else None
    result["files"] = [str(steps_file)] + ([str(png)] if png else [])
    (cfg.out_dir / f"{cfg.label}_sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    (cfg.out_dir / f"{cfg.label}_sweep.md").write_text(render_sweep(result, png) + "\n")
    return result


def render_sweep(result: dict[str, Any], png: Path | None) -> str:
    knee = result["knee"]
    rows = [
        f"| {'**' if i == knee else ''}{s['users']}{'**' if i == knee else ''} | {s['rps']:.1f} | {s['p50_ms']:.0f} | "
        f"{s['p99_ms']:.0f} | {_ms(s.get('server_p99_ms'))} | {s['failures']} | {'yes' if s['stable'] else 'no'} | "
        f"{s['seconds']:.0f} |"
        for i, s in enumerate(result["steps"])
    ]
    slo = result["slo_p99_ms"]
    criterion = f"highest throughput with p99 <= {slo:g} ms" if slo is not None else "most throughput per ms of p99"
    lines = [
        f"# Sweep: {result['label']}",
        "",
        f"Knee ({criterion}): "
        + (
            f"**{result['steps'][knee]['users']} users, {result['goodput_rps']:.1f} req/s**"
            if knee is not None
            else "none"
        ),
        "",
        "| users | req/s | p50 ms per request | p99 ms per request | server p99 ms per request | failures | stable "
        "| seconds |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *(f"- **{name}**: {meaning}" for name, meaning in SWEEP_LEGEND.items()),
    ]
    if not result.get("run", {}).get("server_metrics", True):
        lines += ["", "Server-side numbers omitted: run with --no-server-metrics (the server's /metrics not read)."]
    if png:
        lines += ["", f"![latency vs throughput]({png.name})"]
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "—"
