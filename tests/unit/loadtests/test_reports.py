"""Reports explain themselves: column names and plot labels say their unit and scope, every metric has a legend,
plots leave gaps where there is no data, and comparisons print how each variant was served. Rendered from
fixtures built here (no server, no model)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from loadtests.compare import compare
from loadtests.plots import batch_sizes_figure, plot_run, sweep_figure, timeseries_figure, with_gaps
from loadtests.runner import LoadTestSummary, default_label, inputs_phrase, render_summary
from loadtests.sweep import render_sweep
from optimizers.plots import fidelity_figure, latency_figure, write_plots
from optimizers.report import candidate_header, render_markdown

FIDELITY = {"cosine_mean": 0.995, "cosine_p1": 0.97, "cosine_min": 0.96, "samples": 200, "nn_agreement_at10": 0.9}
PROFILE = [
    {"batch_size": 32, "call_items": c, "threads": 1, "batches": 8, "items_per_s": 100.0 * c**0.5, "p50_ms": 40.0 / c,
     "p99_ms": 60.0 / c, "peak_memory_mb": 12.0 + c}
    for c in (1, 2, 4, 8)
]  # fmt: skip


def _candidate(name: str, items_per_s: float, cosine: float, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "status": "ok",
        "reason": "",
        "runtime": "onnxruntime",
        "precision": "int8",
        "size_bytes": 23_000_000,
        "items_per_s": items_per_s,
        "fidelity": {**FIDELITY, "cosine_mean": cosine},
        "within_budget": cosine >= 0.99,
        "violations": [] if cosine >= 0.99 else ["cosine_mean below 0.99"],
        "pareto": False,
        "profile": PROFILE,
        "chain": [],
        **extra,
    }


@pytest.fixture()
def report() -> dict[str, Any]:
    # Candidates close together: their labels would overlap if printed beside the points.
    candidates = [
        _candidate("onnx-fp32", 300.0, 0.99999, pareto=True),
        _candidate("onnx-int8-dynamic", 410.0, 0.996, pareto=True),
        _candidate("onnx-int8-dynamic-per-channel", 412.0, 0.9962),
        _candidate("onnx-int8-static", 415.0, 0.95),
        {**_candidate("openvino-int8", 0, 0), "status": "failed", "reason": "no openvino", "fidelity": None},
    ]
    return {
        "source": {"name": "all-MiniLM-L6-v2"},
        "recipe": "cpu",
        "task": "embedding",
        "budget": {"min_cosine_mean": 0.99, "min_cosine_min": 0.95, "min_top1_agreement": 0.99},
        "heldout_samples": 200,
        "selected": "onnx-int8-dynamic",
        "candidates": candidates,
        "serving": {"max_call_items": 8},
    }


def test_report_md_names_units_and_explains_every_column(report: dict[str, Any]) -> None:
    text = render_markdown(report)
    header = candidate_header("embedding")
    assert "| " + " | ".join(header) + " |" in text
    assert {"items/s (best)", "best items per call", "RSS growth MB", "NN@10", "cos p1"} <= set(header)
    assert "peak MB" not in text and "| batch |" not in text
    for column in header[2:]:  # every metric column has a legend line under the table
        assert f"- **{column}**:" in text, column
    assert "nearest neighbours" in text and "1st percentile" in text
    profile = "| items per call | items per batch | items/s | p50 ms per batch | p99 ms per batch | RSS growth MB |"
    assert profile in text
    assert "- **p50 ms per batch / p99 ms per batch**:" in text and "- **RSS growth MB**:" in text
    assert "| 8 | 32 |" in text  # call size and the batch it runs in, side by side
    failed = next(line for line in text.splitlines() if line.startswith("| openvino-int8 "))
    assert failed.count("|") == len(header) + 1  # a failed candidate's row still has every column


def test_classifier_report_explains_its_own_columns(report: dict[str, Any]) -> None:
    report = {**report, "task": "classification"}
    text = render_markdown(report)
    for column in ("top-1 agree", "cos p1", "cos min", "labelled acc", "RSS growth MB"):
        assert f"- **{column}**:" in text


def test_chain_plots_label_units_and_number_candidates(report: dict[str, Any], tmp_path: Path) -> None:
    fig = fidelity_figure(report)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "items/s (best profile row)"
    assert ax.get_ylabel() == "cosine mean vs source (0..1)"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    built = [c["name"] for c in report["candidates"] if c["fidelity"]]
    assert [f"{i}. {name}" for i, name in enumerate(built, start=1)] == legend[: len(built)]
    assert sorted(t.get_text() for t in ax.texts) == [str(i) for i in range(1, len(built) + 1)]  # numbers only
    latency = latency_figure(report)
    assert latency is not None
    left, right = latency.axes
    assert left.get_xlabel() == "items per model call (batches of max(32, call) items)"
    assert left.get_ylabel() == "ms per batch (p50, p99)" and right.get_ylabel() == "items/s"
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["p50 ms per batch", "p99 ms per batch"]
    assert "per call" not in " ".join(t.get_text() for t in left.get_legend().get_texts())
    written = write_plots(tmp_path, report)
    assert [p.name for p in written] == ["fidelity_vs_throughput.png", "latency_vs_batch.png"]
    for png in written:
        with Image.open(png) as image:
            assert image.format == "PNG" and image.size[0] > 300
    assert latency_figure({**report, "selected": None}) is None


def _summary(**extra: Any) -> LoadTestSummary:
    client = {"requests": 120.0, "failures": 0.0, "rps": 40.0, "p50_ms": 20.0, "p95_ms": 30.0, "p99_ms": 35.0,
              "error_rate": 0.0, "percentiles_ms": {"50%": 20.0, "99%": 35.0}}  # fmt: skip
    server = {"requests_by_code": {"200": 121.0}, "request_p50_ms": 15.0, "request_p99_ms": 30.0,
              "queue_wait_p50_ms": 1.0, "queue_wait_p99_ms": 3.0, "inference_p50_ms": 9.0, "batches": 40.0,
              "items": 121.0, "batch_size_mean": 3.0, "batch_size_distribution": [("<= 2", 10.0), ("<= 4", 30.0)],
              "padding_ratio_mean": 0.2}  # fmt: skip
    fields: dict[str, Any] = {"label": "r", "host": "http://h", "users": 4, "duration_s": 3, "max_inputs": 1}
    return LoadTestSummary(**{**fields, "client": client, "server": server, **extra})


def test_load_report_names_units_and_explains_its_metrics() -> None:
    text = render_summary(_summary())
    assert "1 input per request" in text and "1..1" not in text
    assert (
        "| side | requests | failures | req/s | p50 ms per request | p95 ms per request | p99 ms per request |" in text
    )
    assert "| server (ingress histogram) | 121 |" in text
    for name in ("requests", "req/s", "p50 / p95 / p99 ms per request", "server (ingress histogram)", "queue wait"):
        assert f"- **{name}**:" in text
    assert "mean items per batch 3.00" in text
    assert "1..4 inputs per request" in render_summary(_summary(max_inputs=4))
    assert inputs_phrase(1, "sentence") == "1 sentence per request"


def test_load_report_without_server_metrics_says_so_and_hides_secrets() -> None:
    summary = _summary(server={}, server_metrics=False, header_names=["X-Tenant", "Authorization"], payload="my.txt")
    text = render_summary(summary)
    assert "server (ingress histogram)" not in text and "Server:" not in text
    assert "Server-side numbers omitted" in text and "--no-server-metrics" in text
    assert "inputs from my.txt; headers sent: X-Tenant, Authorization" in text
    failed = render_summary(_summary(failure_reasons=[{"error": "HTTP 401: token", "count": 7}]))
    assert "Most frequent failures: 7x HTTP 401: token" in failed


def _history_rows(seconds: list[int], requests: list[int], p50: list[float]) -> list[dict[str, float]]:
    return [
        {"Timestamp": 1000.0 + s, "User Count": 2.0, "Requests/s": 0.0 if p == 0 else 5.0, "Failures/s": 0.0,
         "50%": p, "95%": p, "99%": p, "Total Request Count": float(n), "Total Failure Count": 0.0}
        for s, n, p in zip(seconds, requests, p50, strict=True)
    ]  # fmt: skip


def test_timeseries_leaves_gaps_for_missing_seconds_and_starts_axes_at_zero(tmp_path: Path) -> None:
    rows = _history_rows([0, 1, 2, 5, 6], [10, 20, 30, 60, 70], [0.0, 12.0, 13.0, 14.0, 15.0])
    filled = with_gaps(rows)
    assert [r["Timestamp"] - 1000 for r in filled] == [0, 1, 2, 3, 5, 6]
    assert math.isnan(filled[0]["50%"])  # Locust wrote 0: no requests in its window yet, not a 0 ms latency
    assert math.isnan(filled[3]["50%"]) and math.isnan(filled[3]["requests/s"])  # the missing second is a gap
    assert filled[1]["requests/s"] == 10.0 and filled[4]["requests/s"] == 10.0  # 30 requests over 3 s
    fig = timeseries_figure(rows, "run")
    lat, thr, fail, users = fig.axes  # the users twin axis is added last
    assert lat.get_ylabel() == "ms per request (client)"
    assert thr.get_ylabel() == "requests/s (client)" and users.get_ylabel() == "users"
    assert fail.get_ylabel() == "failures/s (client)" and fail.get_xlabel() == "seconds since start"
    assert all(ax.get_ylim()[0] == 0 for ax in (lat, thr, users, fail))  # no failures axis from -0.04
    assert any(math.isnan(y) for line in lat.get_lines() for y in line.get_ydata())  # drawn as gaps, not zeros
    bars = batch_sizes_figure([("<= 2", 3.0), ("<= 4", 5.0)], "b").axes[0]
    assert bars.get_xlabel() == "items per dynamic batch (histogram bucket, server)"
    history = tmp_path / "r_locust_stats_history.csv"
    with history.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["Type", "Name", *rows[0]])
        writer.writeheader()
        writer.writerows({"Type": "", "Name": "Aggregated", **row} for row in rows)
    assert [p.name for p in plot_run(tmp_path, "r", {})] == ["r_timeseries.png"]


def test_sweep_and_compare_reports_name_units_and_explain_columns(tmp_path: Path) -> None:
    steps = [{"users": u, "rps": 10.0 * u, "p50_ms": 10.0 * u, "p99_ms": 20.0 * u, "server_p99_ms": None,
              "failures": 0, "stable": True, "seconds": 9.0} for u in (1, 2)]  # fmt: skip
    result = {"label": "s", "steps": steps, "knee": 1, "slo_p99_ms": 100.0, "goodput_rps": 20.0,
              "run": {"server_metrics": False}}  # fmt: skip
    text = render_sweep(result, None)
    assert "| users | req/s | p50 ms per request | p99 ms per request | server p99 ms per request |" in text
    assert "- **stable**:" in text and "Server-side numbers omitted" in text
    ax = sweep_figure(steps, 1, 100.0).axes[0]
    assert ax.get_xlabel() == "throughput (requests/s, client)" and ax.get_ylabel() == "ms per request (client)"
    assert ax.get_ylim()[0] == 0
    import json
    from dataclasses import asdict

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(asdict(_summary(label="a"))))
    b.write_text(json.dumps(asdict(_summary(label="b", server={}, server_metrics=False))))
    compared = compare(a, b)
    assert "| p99 ms per request (client) |" in compared and "(server)" not in compared
    assert "server-side numbers: b has none" in compared


def test_comparison_prints_both_serving_configurations_and_the_baselines_batching() -> None:
    from optiserve.demo import render

    def row(variant: str, batch: int, calls: int, runtime: str) -> dict[str, Any]:
        serving = {"runtime": runtime, "precision": "fp32", "replicas": 1, "threads_per_replica": 1,
                   "dynamic_batching": batch > 1, "max_batch_size": batch, "max_call_items": calls,
                   "batch_wait_timeout_s": 0.005, "adaptive_wait": True, "max_batch_tokens": 8192}  # fmt: skip
        return {"variant": variant, "package": "1", "runtime": runtime, "precision": "fp32", "size_mb": 90.0,
                "cosine_mean": 1.0, "cosine_min": 1.0, "rps": 10.0, "p50_ms": 50.0, "p99_ms": 80.0,
                "server_p50_ms": 40.0, "mean_batch_size": 1.0, "failures": 0, "serving": serving}  # fmt: skip

    rows = [row("baseline", 1, 1, "torch"), row("optimized", 32, 8, "onnxruntime")]
    ratios = {"throughput": 2.0, "p50_speedup": 2.0, "p99_speedup": 2.0, "size": 0.25}
    text = render(rows, ratios, {"users": 4, "duration_s": 5, "machine": "x86_64", "max_inputs": 1})
    assert "## Serving configuration" in text and "| setting | baseline | optimized |" in text
    assert "| max_batch_size | 1 | 32 |" in text and "| runtime | torch | onnxruntime |" in text
    assert "| threads_per_replica | 1 | 1 |" in text and "| replicas | 1 | 1 |" in text
    assert "The baseline runs with dynamic batching **off**" in text
    assert "1 held-out sentence per request" in text and "p50 ms per request" in text


def test_default_label_is_timestamped() -> None:
    label = default_label()
    assert label.startswith("loadtest-") and len(label) == len("loadtest-20261203-101500")
    assert label[9:17].isdigit() and label[18:].isdigit()


def test_payload_files_and_headers_fail_with_one_line_errors(tmp_path: Path) -> None:
    from loadtests.payloads import PayloadError, read_payload, request_headers
    from loadtests.runner import LoadTestConfig

    texts = tmp_path / "texts.txt"
    texts.write_text("first\n\n  second  \n")
    assert read_payload(texts) == ["first", "second"]
    lines = tmp_path / "texts.jsonl"
    lines.write_text('{"text": "a"}\n"b"\n')
    assert read_payload(lines) == ["a", "b"]
    for name, content, message in (
        ("empty.txt", "\n \n", "holds no inputs"),
        ("bad.jsonl", "{not json\n", "line 1 is not JSON"),
        ("field.jsonl", '{"body": "x"}\n', 'line 1 has no "text" string'),
        ("latin.txt", b"caf\xe9\n", "cannot read it as UTF-8"),
    ):
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(PayloadError, match=message) as caught:
            read_payload(path)
        assert "\n" not in str(caught.value)
    with pytest.raises(PayloadError, match="cannot read"):
        read_payload(tmp_path / "missing.txt")
    assert request_headers(["X-Tenant: a:b"], "k") == {
        "Content-Type": "application/json",
        "X-Tenant": "a:b",
        "Authorization": "Bearer k",
    }
    with pytest.raises(PayloadError, match="--header takes 'Name: value'"):
        LoadTestConfig(host="http://h", out_dir=tmp_path, headers=("no colon",))
