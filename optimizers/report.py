"""The chain's report: ``report.json`` (everything) and ``report.md`` (tables), numbers straight from the run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from optimizers.fidelity import fidelity_score

NAN = float("nan")


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _num(value: float | None, fmt: str = ".4f") -> str:
    return "-" if value is None else format(value, fmt)


def _candidate_rows(report: dict[str, Any], classifier: bool) -> list[list[str]]:
    rows = []
    for c in report["candidates"]:
        fid = c["fidelity"] or {}
        name = f"**{c['name']}**" if c["name"] == report["selected"] else c["name"]
        best = max(c["profile"], key=lambda r: r["items_per_s"]) if c["profile"] else None
        if c["status"] != "ok":
            rows.append([name, c["status"], "-", "-", "-", "-", "-", "-", "-", "-", c["reason"][:160]])
            continue
        status = "in budget" if c["within_budget"] else "; ".join(c["violations"])
        status += f" ({c['reason']})" if c["reason"] else ""
        rows.append(
            [
                name,
                f"{c['runtime']} {c['precision']}",
                f"{c['size_bytes'] / 1e6:.2f}",
                f"{c['items_per_s']:.0f}",
                str(best["call_items"]) if best else "-",
                _num(fidelity_score(fid) if fid else None),
                _num(fid.get("cosine_min")),
                _num(fid.get("labelled_accuracy") if classifier else fid.get("nn_agreement_at10")),
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


def _pass_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for c in report["candidates"]:
        for record in c["chain"]:
            details = record.get("details") or {}
            cached = " (cached)" if record.get("cached") else ""
            summary = [f"- {c['name']} · `{record['name']}` {record['duration_s']:.1f} s{cached}"]
            if "tries" in details:
                tries = ", ".join(
                    f"{_try_label(t)} → cos {t['fidelity']['cosine_mean']:.4f}/{t['fidelity']['cosine_min']:.4f}"
                    for t in details["tries"]
                )
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


def render_markdown(report: dict[str, Any]) -> str:
    budget = report["budget"]
    classifier = report.get("task") == "classification"
    text_limits = ("min_cosine_mean", "min_cosine_min", "min_nn_agreement_at10")
    shown = {k: v for k, v in budget.items() if (k in text_limits) != classifier and k != "min_top1_agreement"}
    if classifier:
        shown = {"min_top1_agreement": budget["min_top1_agreement"], **shown}
    criterion = ", ".join(f"{k} {v}" for k, v in shown.items())
    header = [
        "candidate",
        "runtime",
        "size MB",
        "items/s",
        "best batch",
        "top-1 agree" if classifier else "cos mean",
        "cos min",
        "labelled acc" if classifier else "NN@10",
        "Pareto",
        "peak MB",
        "budget",
    ]
    parts = [
        f"# Optimization report: {report['source']['name']}",
        "",
        f"Recipe `{report.get('recipe', '-')}`. Fidelity budget: {criterion}; measured on "
        f"{report['heldout_samples']} held-out samples against the source model. "
        f"Selected: **{report['selected'] or 'none'}**.",
        "",
        *_context_lines(report),
        _md_table(header, _candidate_rows(report, classifier)),
        "",
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
        "## Profile (held-out texts in arrival order, one model call per batch)",
        "",
    ]
    for c in report["candidates"]:
        if not c["profile"]:
            continue
        parts += [f"### {c['name']}", ""]
        parts.append(
            _md_table(
                ["batch", "items/s", "p50 ms", "p99 ms", "peak MB"],
                [
                    [
                        str(r["call_items"]),
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
    return "\n".join(parts)


def write_report(directory: Path, report: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (directory / "report.md").write_text(render_markdown(report) + "\n", encoding="utf-8")
