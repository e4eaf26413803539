"""``optiserve compare A.json B.json``: two load-test summaries side by side, with B/A ratios."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# (label, where in the summary, higher is better)
FIGURES: list[tuple[str, tuple[str, str], bool]] = [
    ("req/s (client)", ("client", "rps"), True),
    ("p50 ms per request (client)", ("client", "p50_ms"), False),
    ("p95 ms per request (client)", ("client", "p95_ms"), False),
    ("p99 ms per request (client)", ("client", "p99_ms"), False),
    ("error rate (client, failed share)", ("client", "error_rate"), False),
    ("p50 ms per request (server)", ("server", "request_p50_ms"), False),
    ("p99 ms per request (server)", ("server", "request_p99_ms"), False),
    ("queue wait p99 ms per input (server)", ("server", "queue_wait_p99_ms"), False),
    ("mean items per batch (server)", ("server", "batch_size_mean"), True),
]


def load_summary(path: Path) -> dict[str, Any]:
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(summary, dict) or "client" not in summary or "server" not in summary:
        raise ValueError(f"{path}: not a load-test summary (written by optiserve loadtest as <label>.json)")
    return summary


def compare(a_path: Path, b_path: Path) -> str:
    a, b = load_summary(a_path), load_summary(b_path)
    lines = [
        f"# {b.get('label', b_path.stem)} vs {a.get('label', a_path.stem)}",
        "",
        f"| figure | A: {a.get('label', a_path.stem)} | B: {b.get('label', b_path.stem)} | B/A | better |",
        "|---|---|---|---|---|",
    ]
    for label, (side, key), higher_better in FIGURES:
        va, vb = a[side].get(key), b[side].get(key)
        if not isinstance(va, int | float) or not isinstance(vb, int | float):
            continue
        ratio = vb / va if va else float("nan")
        better = "—" if va == vb or ratio != ratio else ("B" if (vb > va) == higher_better else "A")
        lines.append(f"| {label} | {va:.4g} | {vb:.4g} | {ratio:.2f} | {better} |")
    missing = [s.get("label", path.stem) for s, path in ((a, a_path), (b, b_path)) if not s["server"]]
    if missing:
        lines += ["", f"server-side numbers: {' and '.join(missing)} has none (run with --no-server-metrics)."]
    return "\n".join(lines)
