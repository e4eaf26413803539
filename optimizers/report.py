"""The chain's report: ``report.json`` (everything) and ``report.md`` (tables), numbers straight from the run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modelpkg.manifest import Fidelity
from optimizers.fidelity import fidelity_score

NAN = float("nan")


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _num(value: float | None, fmt: str = ".4f") -> str:
    return "-" if value is None else format(value, fmt)


# What each column means, printed under its table (and used by the plots' axis labels).
PROFILE_HEADER = [
    "items per call",
    "items per batch",
    "items/s",
    "p50 ms per batch",
    "p99 ms per batch",
    "RSS growth MB",
]
PROFILE_LEGEND = {
    "items per call": "rows the model runs in one call (the profile's `call_items`; serving's `max_call_items`)",
    "items per batch": "held-out inputs that arrive together (a dynamic batch, at least 32), run in calls of "
    "`items per call` (texts after sorting by length)",
    "items/s": "inputs (texts, images) run per second over the whole profile step, on the profile's threads",
    "p50 ms per batch / p99 ms per batch": "median and 99th-percentile wall time to run one whole batch "
    "(all its calls), in milliseconds",
    "RSS growth MB": "growth of the process's resident memory since the profile began (loading and running), "
    "in MB; not a peak of the whole process",
}


# Per task: the column of the score that ranks candidates (Fidelity.score) and a fourth fidelity column, with the
# Fidelity field each shows.
SCORE_COLUMN = {"classification": "top-1 agree", "rerank": "Kendall tau"}
FOURTH_COLUMN = {
    "classification": ("labelled acc", "labelled_accuracy"),
    "rerank": ("top-1 agree", "top1_agreement"),
    "embedding": ("NN@10", "nn_agreement_at10"),
}


def candidate_header(task: str) -> list[str]:
    """The candidate table's columns, each naming its unit and scope."""
    return [
        "candidate",
        "runtime",
        "size MB",
        "items/s (best)",
        "items/s served",
        "best items per call",
        "p50 ms alone",
        SCORE_COLUMN.get(task, "cos mean"),
        "cos p1",
        "cos min",
        FOURTH_COLUMN.get(task, FOURTH_COLUMN["embedding"])[0],
        *(["recall@10"] if task == "embedding" else []),
        *(["top-5 agree"] if task == "classification" else []),
        "batch inv.",
        "Pareto",
        "RSS growth MB",
        "budget",
    ]


RERANK_LEGEND = {
    "Kendall tau": "per query (half of a held-out sentence, with 8 held-out sentences as its documents), how alike "
    "the candidate's ranking of the documents is to the source's: 1 = the same order, 0 = unrelated; the mean",
    "cos p1": "1st percentile of the cosine similarity of each query's vector of scores to the source's",
    "cos min": "the lowest such cosine over the queries",
    "top-1 agree": "share of queries whose top document is the source model's (0..1)",
}


def candidate_legend(task: str) -> dict[str, str]:
    """One line per column of the candidate table."""
    classifier = task == "classification"
    fidelity = (
        RERANK_LEGEND
        if task == "rerank"
        else (
            {
                "top-1 agree": "share of held-out inputs whose top label matches the source model's (0..1)",
                "cos p1": "1st percentile of the cosine similarity of the candidate's logits to the source's over the "
                "held-out inputs (99% of inputs are at least this close)",
                "cos min": "lowest cosine similarity of the candidate's logits to the source's over held-out inputs",
                "labelled acc": "accuracy against the held-out labels, where the data has them",
                "top-5 agree": "mean share of the source's 5 top labels among the candidate's 5 (more than 5 labels)",
            }
            if classifier
            else {
                "cos mean": "mean cosine similarity of each held-out embedding to the source model's (1 = identical)",
                "cos p1": "1st percentile of those cosines (99% of held-out texts are at least this close)",
                "cos min": "the lowest such cosine over the held-out texts (the worst single text)",
                "NN@10": "overlap of each text's 10 nearest neighbours among the held-out texts, candidate vs source "
                "(0..1; 1 = the same neighbours)",
                "recall@10": "retrieval: share of queries (the first half of each held-out sentence's words) whose own "
                "sentence is among their 10 nearest held-out sentences, candidate (source in brackets)",
            }
        )
    )
    return {
        "size MB": "size of the model files in the package, in MB (10^6 bytes)",
        "items/s (best)": "throughput at the best profile row (inputs per second, on the profile's threads)",
        "items/s served": "throughput using all this machine's cores as a server would (candidates within budget): "
        "the faster of one replica with a thread per core (T) and single-thread replicas, one per core (R)",
        "best items per call": "model-call size of that row (serving's `max_call_items`)",
        "p50 ms alone": "median latency of one input run alone (warm), over 32 held-out inputs: what a lone request "
        "waits for the model",
        **fidelity,
        "batch inv.": "batch invariance: the lowest cosine between an input's output computed alone and among other "
        "held-out inputs as a replica batches them (1 = the same answer whoever else asked; the default budget "
        "requires 0.9999, rounding)",
        "Pareto": "yes: no other candidate is both faster and more faithful",
        "RSS growth MB": "resident-memory growth while loading and profiling the candidate (MB; a growth, not a peak)",
        "budget": "whether the candidate meets the recipe's fidelity budget, or which limit it misses",
    }


def _recall(fidelity: dict[str, Any]) -> str:
    if fidelity.get("recall_at_10") is None:
        return "-"
    source = fidelity.get("source_recall_at_10")
    return _num(fidelity["recall_at_10"]) + (f" ({_num(source)})" if source is not None else "")


def _legend(entries: dict[str, str]) -> list[str]:
    return [*(f"- **{name}**: {meaning}" for name, meaning in entries.items()), ""]


def _candidate_rows(report: dict[str, Any], task: str) -> list[list[str]]:
    rows = []
    for c in report["candidates"]:
        fid = c["fidelity"] or {}
        name = f"**{c['name']}**" if c["name"] == report["selected"] else c["name"]
        best = max(c["profile"], key=lambda r: r["items_per_s"]) if c["profile"] else None
        if c["status"] != "ok":
            rows.append([name, c["status"], *["-"] * (len(candidate_header(task)) - 3), c["reason"][:160]])
            continue
        status = "in budget" if c["within_budget"] else "; ".join(c["violations"])
        status += f" ({c['reason']})" if c["reason"] else ""
        rows.append(
            [
                name,
                f"{c['runtime']} {c['precision']}",
                f"{c['size_bytes'] / 1e6:.2f}",
                f"{c['items_per_s']:.0f}",
                _served(c.get("layout")),
                str(best["call_items"]) if best else "-",
                _num(c.get("single_p50_ms"), ".1f"),
                _num(fidelity_score(fid) if fid else None),
                _num(fid.get("cosine_p1")),
                _num(fid.get("cosine_min")),
                _num(fid.get(FOURTH_COLUMN.get(task, FOURTH_COLUMN["embedding"])[1])),
                *([_recall(fid)] if task == "embedding" else []),
                *([_num(fid.get("top5_agreement"))] if task == "classification" else []),
                _num(fid.get("batch_invariance"), ".5f"),
                "yes" if c["pareto"] else "",
                f"{best['peak_memory_mb']:.0f}" if best and best.get("peak_memory_mb") is not None else "-",
                status,
            ]
        )
    return rows


def _tuning_lines(report: dict[str, Any]) -> list[str]:
    """Each Optuna study: its trials in order, what each measured on the validation split."""
    lines = []
    for study in report.get("tuning") or []:
        lines += [f"## Tuning: {study['candidate']} ({study['sampler']}, {study['duration_s']} s)", ""]
        lines += [
            f"- trial {t['number']}: {t['candidate']}, {t['items_per_s']} items/s, fidelity {t['fidelity']}"
            + ("" if t["within_budget"] else " (outside the budget)")
            for t in study["trials"]
        ]
        lines.append("")
    return lines


def _time_lines(report: dict[str, Any]) -> list[str]:
    """Where the run's time went: each stage until the report was written, then each candidate's passes (run, not
    taken from the cache) and its evaluation (fidelity, batch invariance, profile)."""
    stages = report.get("stage_seconds")
    if not stages:
        return []
    lines = ["## Where the time went", "", "Stages: " + ", ".join(f"{name} {s:.1f} s" for name, s in stages.items())]
    lines.append("(until this report was written).")
    lines.append("")
    for c in report["candidates"]:
        built = sum(float(r["duration_s"]) for r in c["chain"] if not r.get("cached"))
        evaluated = c.get("evaluate_s")
        lines.append(
            f"- {c['name']}: passes {built:.1f} s"
            + (f", evaluation {evaluated:.1f} s" if evaluated is not None else "")
        )
    return [*lines, ""]


def _context_lines(report: dict[str, Any]) -> list[str]:
    """Where the numbers come from: the machine (CPU model and ISA features) and the data and its splits."""
    lines = []
    if hardware := report.get("hardware"):
        features = ", ".join(hardware.get("features") or []) or "none of avx512/vnni/bf16/amx"
        gpu = f"; GPU {hardware['gpu']}" if hardware.get("gpu") else ""
        lines.append(f"Measured on: {hardware['cpu_model']}, {hardware['cpu_count']} cores ({features}){gpu}.")
    if data := report.get("data"):
        splits = ", ".join(f"{name} {size}" for name, size in data["splits"].items())
        lines.append(f"Data: {data['source']} ({splits}).")
    return [*lines, ""] if lines else []


def _try_label(attempt: dict[str, Any]) -> str:
    """ONNX Runtime quantization tries name their granularity and exclusions; NNCF's name the method."""
    if "how" in attempt:
        return str(attempt["how"])
    return f"per_channel={attempt['per_channel']} fp32 nodes={len(attempt['excluded'])}"


def _judged(fidelity: dict[str, Any]) -> str:
    """The numbers that judge a fidelity (``Fidelity.judged_by``), for a pass's tries: ``cos 0.9990/0.9812``
    (mean/min) for embeddings, ``kendall_tau 0.9700/top1_agreement 0.9900`` for rerankers."""
    judged = Fidelity(**fidelity).judged_by
    if judged[:2] == ("cosine_mean", "cosine_min"):
        return f"cos {fidelity['cosine_mean']:.4f}/{fidelity['cosine_min']:.4f}"
    return "/".join(f"{name} {fidelity[name]:.4f}" for name in judged)


def _try_outcome(attempt: dict[str, Any]) -> str:
    """What one try of a pass came to: its judged fidelity, or that it was stopped (a time budget)."""
    if "fidelity" in attempt:
        return _judged(attempt["fidelity"])
    return f"stopped at its time budget after {attempt['stopped_after_s']:.0f} s"


def _pass_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for c in report["candidates"]:
        for record in c["chain"]:
            details = record.get("details") or {}
            cached = " (cached)" if record.get("cached") else ""
            summary = [f"- {c['name']} · `{record['name']}` {record['duration_s']:.1f} s{cached}"]
            if "tries" in details:
                tries = ", ".join(f"{_try_label(t)} → {_try_outcome(t)}" for t in details["tries"])
                summary.append(f": tries {tries}")
            if "history" in details:
                history = details["history"]
                step = max(1, len(history) // 8)
                shown = [*history[:-1:step], history[-1]]
                losses = ", ".join(f"{h['epoch']}: {h['validation_loss']:.4f}" for h in shown)
                student = details.get("kept_layers") or details.get("student_kwargs") or details.get("student")
                summary.append(
                    f": validation loss by epoch {losses} (best {details['best_validation_loss']:.4f}); "
                    f"student {student}"
                )
            if "fused_operators" in details:
                summary.append(f": fused {details['fused_operators']}")
            lines.append("".join(summary))
    return lines


# The budget's limits that apply to each task (the optional ones are shown where set).
TASK_LIMITS = {
    "embedding": ("min_cosine_mean", "min_cosine_min", "min_nn_agreement_at10", "min_recall_at_10"),
    "classification": ("min_top1_agreement", "min_labelled_accuracy"),
    "rerank": ("min_kendall_tau", "min_top1_agreement"),
}


def budget_shown(budget: dict[str, Any], task: str) -> dict[str, Any]:
    """The budget's limits for ``task``, and any other limit set (such as ``max_abs_error``)."""
    own = TASK_LIMITS.get(task, TASK_LIMITS["embedding"])
    others = {limit for limits in TASK_LIMITS.values() for limit in limits} - set(own)
    shown = {k: budget[k] for k in own if budget.get(k) is not None}
    return shown | {k: v for k, v in budget.items() if k not in own and k not in others and v is not None}


def _width_lines(report: dict[str, Any]) -> list[str]:
    """A Matryoshka model's selected candidate at each declared width (``dimensions`` in a request)."""
    chosen = next((c for c in report["candidates"] if c["name"] == report["selected"] and c["fidelity"]), None)
    widths = (chosen["fidelity"].get("widths") or []) if chosen else []
    if chosen is None or not widths:
        return []
    rows = [[str(w["width"]), _num(w["cosine_mean"]), _num(w["cosine_min"]), _recall(w)] for w in widths]
    return [
        f"### {chosen['name']} cut to its Matryoshka widths (a request's `dimensions`)",
        "",
        _md_table(["width", "cos mean", "cos min", "recall@10"], rows),
        "",
        "Each vector cut to its first `width` values and re-normalized, against the source's cut the same way; "
        "recall@10 as above, at that width (the source's in brackets).",
        "",
    ]


def _served(layout: dict[str, Any] | None) -> str:
    if not layout:
        return "-"
    best = max(layout["threads_items_per_s"], layout["replicas_items_per_s"])
    return f"{best:.0f} ({'R' if layout['chosen'] == 'replicas' else 'T'})"


def _ranking(report: dict[str, Any]) -> str:
    """Which number decided among the candidates within budget (the recipe's ``selection``)."""
    selection = report.get("selection") or {}
    cores = next((c["layout"]["cores"] for c in report["candidates"] if c.get("layout")), None)
    if selection.get("rank_by") == "latency":
        text = "ranked by single-input p50 (`p50 ms alone`)"
    elif cores:
        text = f"ranked by throughput as served on this machine's {cores} cores (`items/s served`)"
    else:
        text = "ranked by throughput (`items/s (best)`)"
    limit = selection.get("max_single_p50_ms")
    return text + (f", among those at most {limit:g} ms alone" if limit is not None else "")


def render_markdown(report: dict[str, Any]) -> str:
    budget = report["budget"]
    task = str(report.get("task") or "embedding")
    criterion = ", ".join(f"{k} {v}" for k, v in budget_shown(budget, task).items())
    header = candidate_header(task)
    parts = [
        f"# Optimization report: {report['source']['name']}",
        "",
        f"Recipe `{report.get('recipe', '-')}`. Fidelity budget: {criterion}; measured on "
        f"{report['heldout_samples']} held-out samples against the source model. "
        f"Selected: **{report['selected'] or 'none'}**, {_ranking(report)}.",
        "",
        *_context_lines(report),
        _md_table(header, _candidate_rows(report, task)),
        "",
        *_legend(candidate_legend(task)),
        *_width_lines(report),
    ]
    if report.get("serving"):
        parts += [
            "Recommended serving config (from the selected candidate's profile): "
            + ", ".join(f"`{k}={v}`" for k, v in report["serving"].items()),
            "",
        ]
    parts += [
        "## Passes",
        "",
        *_pass_lines(report),
        "",
        *_tuning_lines(report),
        *_time_lines(report),
        "## Profile (held-out inputs in arrival order, in batches run as model calls of at most `items per call`)",
        "",
    ]
    for c in report["candidates"]:
        if not c["profile"]:
            continue
        parts += [f"### {c['name']}", ""]
        parts.append(
            _md_table(
                PROFILE_HEADER,
                [
                    [
                        str(r["call_items"]),
                        str(r.get("batch_size", r["call_items"])),
                        f"{r['items_per_s']:.0f}",
                        f"{r['p50_ms']:.1f}",
                        f"{r['p99_ms']:.1f}",
                        _num(r.get("peak_memory_mb"), ".0f"),
                    ]
                    for r in c["profile"]
                ],
            )
        )
        parts.append("")
    if any(c["profile"] for c in report["candidates"]):
        parts += _legend(PROFILE_LEGEND)
    return "\n".join(parts)


def write_report(directory: Path, report: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (directory / "report.md").write_text(render_markdown(report) + "\n", encoding="utf-8")
