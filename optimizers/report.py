"""The chain's report: ``report.json`` (everything) and ``report.md`` (tables), numbers straight from the run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(report: dict[str, Any]) -> str:
    budget = report["budget"]
    classifier = report.get("task") == "classification"
    rows = []
    for c in report["candidates"]:
        fid = c["fidelity"] or {}
        rows.append(
            [
                ("**" + c["name"] + "**") if c["name"] == report["selected"] else c["name"],
                c["runtime"],
                c["precision"],
                f"{c['size_bytes'] / 1e6:.1f}",
                f"{c['items_per_s']:.0f}",
                f"{fid.get('cosine_mean', float('nan')):.4f}",
                f"{fid.get('cosine_min', float('nan')):.4f}",
                *([f"{fid.get('top1_agreement') or float('nan'):.4f}"] if classifier else []),
                "yes" if c["within_budget"] else "no",
            ]
        )
    criterion = (
        f"top-1 agreement >= {budget['min_top1_agreement']}"
        if classifier
        else f"cosine mean >= {budget['min_cosine_mean']}, min >= {budget['min_cosine_min']}"
    )
    parts = [
        f"# Optimization report: {report['source']['name']}",
        "",
        f"Fidelity budget: {criterion}, "
        f"on {report['heldout_samples']} held-out sentences vs the torch fp32 source. "
        f"Selected: **{report['selected'] or 'none'}**.",
        "",
        _md_table(
            [
                "candidate",
                "runtime",
                "precision",
                "size MB",
                "items/s (best)",
                "cos mean",
                "cos min",
                *(["top-1 agree"] if classifier else []),
                "in budget",
            ],
            rows,
        ),
        "",
        "## Profile (dynamic batches of held-out text in arrival order, sorted and cut into model calls)",
        "",
    ]
    for c in report["candidates"]:
        parts += [f"### {c['name']}", ""]
        parts.append(
            _md_table(
                ["batch", "rows per call", "items/s", "p50 ms", "p99 ms"],
                [
                    [
                        str(r["batch_size"]),
                        str(r["call_items"]),
                        f"{r['items_per_s']:.0f}",
                        f"{r['p50_ms']:.1f}",
                        f"{r['p99_ms']:.1f}",
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
