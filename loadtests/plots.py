"""PNG plots of load tests (matplotlib, no display needed): latency percentiles, throughput and failures over
time from Locust's stats history, the server's items-per-batch histogram, and a sweep's latency-vs-throughput
curve with its knee.

Each plot is built by a ``*_figure`` function returning its :class:`~matplotlib.figure.Figure` (labels can be
checked); seconds without data are gaps (NaN), never zeros, and count axes start at 0."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

NAN = float("nan")
LATENCY_KEYS = ("50%", "95%", "99%")
LATENCY_LABEL = "ms per request (client)"


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return NAN


def _history(history_csv: Path) -> list[dict[str, float]]:
    """Aggregated rows of Locust's ``*_stats_history.csv``, as numbers (NaN where Locust writes N/A)."""
    with history_csv.open(newline="") as fh:
        rows = [row for row in csv.DictReader(fh) if row["Name"] == "Aggregated"]
    return [{key: _number(value) for key, value in row.items() if key not in ("Type", "Name")} for row in rows]


def with_gaps(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    """Rows one second apart, with ``requests/s`` and ``failures/s`` from the growth of Locust's cumulative counts
    (its own columns lag by seconds and read 0 early on). A missing second becomes a NaN row (a gap in the line,
    not a drop to zero), and so does a latency Locust wrote as 0 because its window held no requests yet."""
    out: list[dict[str, float]] = []
    previous: dict[str, float] | None = None
    for row in rows:
        if previous and row["Timestamp"] - previous["Timestamp"] > 1.5:
            gap = {key: NAN for key in (*row, "requests/s", "failures/s")}
            out.append(gap | {"Timestamp": previous["Timestamp"] + 1})
        seconds = row["Timestamp"] - previous["Timestamp"] if previous else 0.0
        point = dict(row)
        for rate, total in (("requests/s", "Total Request Count"), ("failures/s", "Total Failure Count")):
            point[rate] = (row[total] - previous[total]) / seconds if previous and seconds > 0 else NAN
        idle = not row.get("Requests/s")  # 0 or NaN: Locust's window had no requests to take percentiles of
        for key in LATENCY_KEYS:
            point[key] = NAN if idle and not row[key] else row[key]
        out.append(point)
        previous = row
    return out


def _top(values: list[float], floor: float = 1.0) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return max([floor, *finite]) * 1.1


def timeseries_figure(rows: list[dict[str, float]], title: str) -> Figure:
    """Latency percentiles, requests/s with users, and failures/s over seconds since the first row."""
    if not rows:
        raise ValueError("no Aggregated rows to plot")
    rows = with_gaps(rows)
    start = rows[0]["Timestamp"]
    t = [row["Timestamp"] - start for row in rows]
    fig = Figure(figsize=(8, 8))
    lat, thr, fail = fig.subplots(3, 1, sharex=True)
    for key in LATENCY_KEYS:
        lat.plot(t, [row[key] for row in rows], marker=".", label=f"p{key.rstrip('%')}")
    lat.set_ylabel(LATENCY_LABEL)
    lat.set_ylim(0, _top([row[key] for row in rows for key in LATENCY_KEYS]))
    lat.legend(loc="upper left")
    requests = [row["requests/s"] for row in rows]
    thr.plot(t, requests, color="tab:green", marker=".", label="requests/s")
    thr.set_ylabel("requests/s (client)")
    thr.set_ylim(0, _top(requests))
    users = thr.twinx()
    users.step(t, [row["User Count"] for row in rows], color="tab:gray", where="post", label="users")
    users.set_ylabel("users")
    users.set_ylim(0, _top([row["User Count"] for row in rows]))
    failures = [row["failures/s"] for row in rows]
    fail.plot(t, failures, color="tab:red", marker=".")
    fail.set_ylabel("failures/s (client)")
    fail.set_ylim(0, _top(failures))
    fail.set_xlabel("seconds since start")
    fig.suptitle(title)
    return fig


def plot_timeseries(history_csv: Path, png: Path, title: str) -> Path:
    rows = _history(history_csv)
    if not rows:
        raise ValueError(f"{history_csv} has no Aggregated rows")
    return _save(timeseries_figure(rows, title), png)


def _save(fig: Figure, png: Path) -> Path:
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    return png


def batch_sizes_figure(distribution: list[tuple[str, float]], title: str) -> Figure:
    fig = Figure(figsize=(8, 3))
    ax = fig.add_subplot()
    ax.bar([label for label, _ in distribution], [count for _, count in distribution], color="tab:blue")
    ax.set_xlabel("items per dynamic batch (histogram bucket, server)")
    ax.set_ylabel("batches")
    ax.set_title(title)
    return fig


def plot_batch_sizes(distribution: list[tuple[str, float]], png: Path, title: str) -> Path:
    return _save(batch_sizes_figure(distribution, title), png)


def plot_run(out_dir: Path, label: str, server: dict[str, Any]) -> list[Path]:
    """The plots of one load test: time series, and the server's batch sizes when it reported any."""
    written = [
        plot_timeseries(out_dir / f"{label}_locust_stats_history.csv", out_dir / f"{label}_timeseries.png", label)
    ]
    if server.get("batch_size_distribution"):
        written.append(
            plot_batch_sizes(
                server["batch_size_distribution"], out_dir / f"{label}_batch_sizes.png", f"{label}: items per batch"
            )
        )
    return written


def sweep_figure(steps: list[dict[str, Any]], knee: int | None, slo_p99_ms: float | None) -> Figure:
    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot()
    rps = [s["rps"] for s in steps]
    ax.plot(rps, [s["p99_ms"] for s in steps], marker="o", label="p99 (client)")
    ax.plot(rps, [s["p50_ms"] for s in steps], marker=".", label="p50 (client)")
    for s in steps:
        ax.annotate(f"{s['users']}u", (s["rps"], s["p99_ms"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if slo_p99_ms is not None:
        ax.axhline(slo_p99_ms, color="tab:red", linestyle="--", label=f"SLO p99 {slo_p99_ms:g} ms")
    if knee is not None:
        ax.scatter([rps[knee]], [steps[knee]["p99_ms"]], s=160, facecolors="none", edgecolors="black", label="knee")
    ax.set_xlabel("throughput (requests/s, client)")
    ax.set_ylabel(LATENCY_LABEL)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left")
    ax.set_title("latency vs throughput (each point: one user count, u)")
    return fig


def plot_sweep(steps: list[dict[str, Any]], knee: int | None, png: Path, slo_p99_ms: float | None) -> Path:
    return _save(sweep_figure(steps, knee, slo_p99_ms), png)
