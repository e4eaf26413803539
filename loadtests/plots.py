"""PNG plots of load tests (matplotlib, no display needed): latency percentiles, throughput and failures over
time from Locust's stats history, the server's batch-size histogram, and a sweep's latency-vs-throughput curve
with its knee."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _history(history_csv: Path) -> list[dict[str, float]]:
    """Aggregated rows of Locust's ``*_stats_history.csv``, as numbers (NaN where Locust writes N/A)."""

    def number(value: str) -> float:
        try:
            return float(value)
        except ValueError:
            return float("nan")

    with history_csv.open(newline="") as fh:
        rows = [row for row in csv.DictReader(fh) if row["Name"] == "Aggregated"]
    return [{key: number(value) for key, value in row.items() if key not in ("Type", "Name")} for row in rows]


def plot_timeseries(history_csv: Path, png: Path, title: str) -> Path:
    rows = _history(history_csv)
    if not rows:
        raise ValueError(f"{history_csv} has no Aggregated rows")
    start = rows[0]["Timestamp"]
    t = [row["Timestamp"] - start for row in rows]
    fig, (lat, thr, fail) = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    for key in ("50%", "95%", "99%"):
        lat.plot(t, [row[key] for row in rows], label=f"p{key.rstrip('%')}")
    lat.set_ylabel("latency (ms)")
    lat.legend(loc="upper left")
    thr.plot(t, [row["Requests/s"] for row in rows], color="tab:green", label="requests/s")
    thr.set_ylabel("requests/s")
    users = thr.twinx()
    users.step(t, [row["User Count"] for row in rows], color="tab:gray", where="post", label="users")
    users.set_ylabel("users")
    fail.plot(t, [row["Failures/s"] for row in rows], color="tab:red")
    fail.set_ylabel("failures/s")
    fail.set_xlabel("seconds")
    fig.suptitle(title)
    return _save(fig, png)


def _save(fig: plt.Figure, png: Path) -> Path:
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)
    return png


def plot_batch_sizes(distribution: list[tuple[str, float]], png: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.bar([label for label, _ in distribution], [count for _, count in distribution], color="tab:blue")
    ax.set_xlabel("items per dynamic batch (histogram bucket)")
    ax.set_ylabel("batches")
    ax.set_title(title)
    return _save(fig, png)


def plot_run(out_dir: Path, label: str, server: dict[str, Any]) -> list[Path]:
    """The plots of one load test: time series, and the server's batch sizes when it reported any."""
    written = [
        plot_timeseries(out_dir / f"{label}_locust_stats_history.csv", out_dir / f"{label}_timeseries.png", label)
    ]
    if server.get("batch_size_distribution"):
        written.append(
            plot_batch_sizes(
                server["batch_size_distribution"], out_dir / f"{label}_batch_sizes.png", f"{label}: batch sizes"
            )
        )
    return written


def plot_sweep(steps: list[dict[str, Any]], knee: int | None, png: Path, slo_p99_ms: float | None) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4))
    rps = [s["rps"] for s in steps]
    ax.plot(rps, [s["p99_ms"] for s in steps], marker="o", label="p99 (client)")
    ax.plot(rps, [s["p50_ms"] for s in steps], marker=".", label="p50 (client)")
    for s in steps:
        ax.annotate(f"{s['users']}u", (s["rps"], s["p99_ms"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if slo_p99_ms is not None:
        ax.axhline(slo_p99_ms, color="tab:red", linestyle="--", label=f"SLO p99 {slo_p99_ms:g} ms")
    if knee is not None:
        ax.scatter([rps[knee]], [steps[knee]["p99_ms"]], s=160, facecolors="none", edgecolors="black", label="knee")
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("latency (ms)")
    ax.legend(loc="upper left")
    ax.set_title("latency vs throughput")
    return _save(fig, png)
