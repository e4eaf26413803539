"""The chain report's plots: fidelity vs throughput for every candidate (Pareto front and budget marked), and
latency and throughput vs batch size for the selected candidate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optimizers.fidelity import fidelity_score

FIDELITY_PLOT = "fidelity_vs_throughput.png"
LATENCY_PLOT = "latency_vs_batch.png"


def _score(candidate: dict[str, Any]) -> float:
    return fidelity_score(candidate["fidelity"])


def write_plots(directory: Path, report: dict[str, Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    built = [c for c in report["candidates"] if c["fidelity"]]
    classifier = report["task"] == "classification"
    written = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c in built:
        marker = "*" if c["name"] == report["selected"] else ("o" if c["pareto"] else "x")
        ax.scatter(
            c["items_per_s"],
            _score(c),
            marker=marker,
            s=120 if marker == "*" else 40,
            color="tab:green" if c["within_budget"] else "tab:red",
        )
        ax.annotate(c["name"], (c["items_per_s"], _score(c)), fontsize=7, xytext=(4, 3), textcoords="offset points")
    front = sorted((c for c in built if c["pareto"]), key=lambda c: c["items_per_s"])
    ax.plot([c["items_per_s"] for c in front], [_score(c) for c in front], "--", color="grey", label="Pareto front")
    limit = report["budget"]["min_top1_agreement" if classifier else "min_cosine_mean"]
    ax.axhline(limit, color="tab:red", linewidth=0.8, label="budget")
    ax.set_xlabel("items/s (best batch size)")
    ax.set_ylabel("top-1 agreement" if classifier else "cosine mean vs source")
    ax.set_title(f"{report['source']['name']}: fidelity vs throughput (green: within budget, *: selected)")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(directory / FIDELITY_PLOT, dpi=110)
    plt.close(fig)
    written.append(directory / FIDELITY_PLOT)

    chosen = next((c for c in built if c["name"] == report["selected"]), None)
    if chosen and chosen["profile"]:
        rows = chosen["profile"]
        sizes = [r["call_items"] for r in rows]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.plot(sizes, [r["p50_ms"] for r in rows], "o-", label="p50 ms per call")
        ax.plot(sizes, [r["p99_ms"] for r in rows], "o--", label="p99 ms per call")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size (items per model call)")
        ax.set_ylabel("latency (ms)")
        twin = ax.twinx()
        twin.plot(sizes, [r["items_per_s"] for r in rows], "s-", color="tab:green", label="items/s")
        twin.set_ylabel("items/s")
        ax.legend(loc="upper left", fontsize=8)
        twin.legend(loc="lower right", fontsize=8)
        ax.set_title(f"{chosen['name']}: latency and throughput vs batch size")
        fig.tight_layout()
        fig.savefig(directory / LATENCY_PLOT, dpi=110)
        plt.close(fig)
        written.append(directory / LATENCY_PLOT)
    return written
