"""The chain report's plots: fidelity vs throughput for every candidate (Pareto front and budget marked; points
numbered, names in the legend), and latency and throughput vs model-call size for the selected candidate.

Each plot is built by a function returning its :class:`~matplotlib.figure.Figure`, so its labels can be checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from optimizers.fidelity import fidelity_score

FIDELITY_PLOT = "fidelity_vs_throughput.png"
LATENCY_PLOT = "latency_vs_batch.png"
THROUGHPUT_LABEL = "items/s (best profile row)"
CALL_LABEL = "items per model call (batches of max(32, call) items)"
LATENCY_LABEL = "ms per batch (p50, p99)"


# Per task: the y axis of the fidelity figure (Fidelity.score) and the budget limit drawn on it.
SCORE_AXIS = {
    "classification": ("top-1 agreement vs source (0..1)", "min_top1_agreement"),
    "rerank": ("Kendall tau of each query's ranking vs source (-1..1)", "min_kendall_tau"),
    "embedding": ("cosine mean vs source (0..1)", "min_cosine_mean"),
}


def _score(candidate: dict[str, Any]) -> float:
    return fidelity_score(candidate["fidelity"])


def _marker(candidate: dict[str, Any], report: dict[str, Any]) -> str:
    return "*" if candidate["name"] == report["selected"] else ("o" if candidate["pareto"] else "x")


def fidelity_figure(report: dict[str, Any]) -> Figure:
    """Fidelity vs throughput: each candidate a numbered point, named in the legend (no overlapping labels)."""
    built = [c for c in report["candidates"] if c["fidelity"]]
    task = report["task"]
    fig = Figure(figsize=(9, 4.8))
    ax = fig.add_subplot()
    for number, c in enumerate(built, start=1):
        marker = _marker(c, report)
        x, y = c["items_per_s"], _score(c)
        color = "tab:green" if c["within_budget"] else "tab:red"
        ax.scatter(x, y, marker=marker, s=120 if marker == "*" else 40, color=color, label=f"{number}. {c['name']}")
        ax.annotate(str(number), (x, y), fontsize=8, xytext=(4, 3 + 7 * (number % 2)), textcoords="offset points")
    front = sorted((c for c in built if c["pareto"]), key=lambda c: c["items_per_s"])
    ax.plot([c["items_per_s"] for c in front], [_score(c) for c in front], "--", color="grey", label="Pareto front")
    score, limit_name = SCORE_AXIS.get(task, SCORE_AXIS["embedding"])
    limit = report["budget"].get(limit_name)
    if limit is not None:
        ax.axhline(limit, color="tab:red", linewidth=0.8, label="budget")
    ax.set_xlabel(THROUGHPUT_LABEL)
    ax.set_ylabel(score)
    ax.set_title(f"{report['source']['name']}: fidelity vs throughput (green: within budget, *: selected)", fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, borderaxespad=0)
    fig.tight_layout()
    return fig


def latency_figure(report: dict[str, Any]) -> Figure | None:
    """Latency per batch and throughput vs items per model call, for the selected candidate (None without one)."""
    chosen = next((c for c in report["candidates"] if c["fidelity"] and c["name"] == report["selected"]), None)
    if not chosen or not chosen["profile"]:
        return None
    rows = chosen["profile"]
    sizes = [r["call_items"] for r in rows]
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    ax.plot(sizes, [r["p50_ms"] for r in rows], "o-", label="p50 ms per batch")
    ax.plot(sizes, [r["p99_ms"] for r in rows], "o--", label="p99 ms per batch")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(CALL_LABEL)
    ax.set_ylabel(LATENCY_LABEL)
    ax.set_ylim(bottom=0)
    twin = ax.twinx()
    twin.plot(sizes, [r["items_per_s"] for r in rows], "s-", color="tab:green", label="items/s")
    twin.set_ylabel("items/s")
    twin.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize=8)
    twin.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{chosen['name']}: latency and throughput vs items per model call")
    fig.tight_layout()
    return fig


def write_plots(directory: Path, report: dict[str, Any]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in ((FIDELITY_PLOT, fidelity_figure(report)), (LATENCY_PLOT, latency_figure(report))):
        if fig is not None:
            fig.savefig(directory / name, dpi=110, bbox_inches="tight")
            written.append(directory / name)
    return written
