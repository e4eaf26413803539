"""``optiserve demo``: optimize the bundled model, then serve the baseline (torch fp32, no batching) and the
optimized package one after the other under the same Locust load, on the same machine, and compare."""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

from loadtests.runner import LoadTestConfig, LoadTestSummary, goodput_rps, inputs_phrase, run_loadtest
from modelpkg.package import ModelPackage, load_package
from optimizers.chain import optimize
from optimizers.source import bundled_model_dir
from serving.launcher import DEFAULT_HOST, start
from serving.ports import free_port

log = logging.getLogger("optiserve")
WARMUP_S = 3
# The baseline is served as an unoptimized server would be: one input per model call, no dynamic batching.
NO_BATCHING = {"max_batch_size": 1, "max_call_items": 1}
# The load draws its sentences from the 1,000 held-out ones, so within seconds every request would be a response
# cache hit and the comparison would measure the cache, not the models: both variants run without it.
NO_CACHE = {"cache_mb": 0}
BATCHING_KEYS = ("max_batch_size", "max_call_items", "batch_wait_timeout_s", "adaptive_wait", "max_batch_tokens")
REPLICAS = 1  # run_demo deploys one replica of each variant


def serving_config(package: ModelPackage, overrides: dict[str, Any], threads: int | None) -> dict[str, Any]:
    """How a variant is served: runtime, precision, replicas, threads per replica and its batching settings (the
    package's serving defaults with this run's overrides)."""
    m = package.manifest
    merged = {**m.serving.model_dump(), **overrides}
    batching = {key: merged[key] for key in BATCHING_KEYS}
    return {
        "runtime": m.runtime,
        "precision": m.precision,
        "replicas": REPLICAS,
        "threads_per_replica": threads or 1,
        "dynamic_batching": merged["max_batch_size"] > 1,
        **batching,
        "response_cache": "off" if merged.get("cache_mb") == 0 else "package default",
    }


def _config_lines(rows: list[dict[str, Any]]) -> list[str]:
    """A table of each variant's serving configuration, and a sentence on the baseline's batching."""
    keys = ["runtime", "precision", "replicas", "threads_per_replica", "dynamic_batching", *BATCHING_KEYS]
    keys += ["response_cache"]
    lines = ["| setting | " + " | ".join(r["variant"] for r in rows) + " |", "|---|" + "---|" * len(rows)]
    lines += [f"| {key} | " + " | ".join(str(r["serving"].get(key, "-")) for r in rows) + " |" for key in keys]
    base = rows[0]["serving"]
    state = "on" if base["dynamic_batching"] else "off"
    lines += [
        "",
        f"The baseline runs with dynamic batching **{state}** (max_batch_size={base['max_batch_size']}, "
        f"max_call_items={base['max_call_items']}): "
        + (
            "one input per model call, as an unoptimized server would run it."
            if state == "off"
            else "the same batching as its package's defaults."
        ),
    ]
    return lines


def _row(
    label: str, package: ModelPackage, load: LoadTestSummary, slo_p99_ms: float | None, serving: dict[str, Any]
) -> dict[str, Any]:
    m = package.manifest
    weights = set(m.weights_files)  # e.g. OpenVINO's model.bin beside model.xml, ONNX external data
    size = sum(f.size for f in m.files if f.path.startswith(m.model_path) or f.path in weights)
    return {
        "variant": label,
        "package": m.version,
        "runtime": m.runtime,
        "precision": m.precision,
        "size_mb": size / 1e6,
        "cosine_mean": m.fidelity.cosine_mean if m.fidelity else None,
        "cosine_min": m.fidelity.cosine_min if m.fidelity else None,
        "rps": load.client["rps"],
        "p50_ms": load.client["p50_ms"],
        "p99_ms": load.client["p99_ms"],
        "failures": load.failures,
        "requests": load.client["requests"],
        "server_p50_ms": load.server["request_p50_ms"],
        "mean_batch_size": load.server["batch_size_mean"],
        "goodput_rps": goodput_rps(load.client, slo_p99_ms) if slo_p99_ms is not None else None,
        "serving": serving,
    }


def render(rows: list[dict[str, Any]], ratios: dict[str, float], context: dict[str, Any]) -> str:
    header = (
        "| variant | runtime | precision | size MB | cos mean | cos min | req/s | p50 ms per request "
        "| p99 ms per request | server p50 ms per request | mean items per batch | failures |"
    )
    lines = [
        "# optiserve demo: baseline vs optimized",
        "",
        f"Same Locust load for each ({context['users']} users, {context['duration_s']} s, "
        + inputs_phrase(context.get("max_inputs", 1), "held-out sentence")
        + "), served one after the other by Ray Serve "
        f"on {context['machine']}. Locust runs on the same cores as the server, so absolute numbers understate "
        "both; the ratios are the comparison.",
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} ({r['package']}) | {r['runtime']} | {r['precision']} | {r['size_mb']:.1f} | "
            f"{r['cosine_mean']:.4f} | {r['cosine_min']:.4f} | {r['rps']:.1f} | {r['p50_ms']:.0f} | "
            f"{r['p99_ms']:.0f} | {r['server_p50_ms']:.1f} | {r['mean_batch_size']:.2f} | {r['failures']} |"
        )
    lines += [
        "",
        "- **size MB**: model files in the package (10^6 bytes); **cos mean / cos min**: mean and lowest cosine "
        "similarity of held-out embeddings to the source model's (1 = identical)",
        "- **req/s**, **p50 / p99 ms per request**: Locust's final client-side numbers (one request: "
        f"{inputs_phrase(context.get('max_inputs', 1), 'sentence')}); **server p50**: the server's own request "
        "histogram; **mean items per batch**: inputs per dynamic batch the server ran",
        "",
        "## Serving configuration",
        "",
        *_config_lines(rows),
    ]
    lines += [
        "",
        f"**Optimized vs baseline:** throughput x{ratios['throughput']:.2f}, p50 latency x{ratios['p50_speedup']:.2f} "
        f"faster, p99 latency x{ratios['p99_speedup']:.2f} faster, size x{ratios['size']:.2f}.",
    ]
    if context.get("slo_p99_ms") is not None:
        base, opt = rows
        lines.append(
            f"Goodput (requests/s answered within {context['slo_p99_ms']:g} ms, a lower bound from Locust's "
            f"percentiles): baseline {base['goodput_rps']:.1f}, optimized {opt['goodput_rps']:.1f} "
            f"(x{ratios['goodput']:.2f})."
        )
    return "\n".join(lines)


def run_demo(
    out: Path,
    users: int = 8,
    duration_s: int = 20,
    port: int = 0,
    *,
    baseline: Path | None = None,
    optimized: Path | None = None,
    slo_p99_ms: float | None = None,
    max_inputs: int = 1,
) -> dict[str, Any]:
    """Run the whole job (``optiserve demo``, and ``optiserve bench`` with given packages); write
    ``comparison.md`` and ``comparison.json`` under ``out`` and return the data. Without packages, the bundled
    model is optimized first (its torch fp32 package is the baseline)."""
    started = time.monotonic()
    packages = out / "packages"
    if baseline is None or optimized is None:
        optimize(bundled_model_dir(), packages / "optimized", baseline_out=packages / "baseline")
        baseline, optimized = packages / "baseline", packages / "optimized"
    variants = [
        ("baseline", load_package(baseline), {**NO_BATCHING, **NO_CACHE}),
        ("optimized", load_package(optimized), NO_CACHE),
    ]
    server = start(DEFAULT_HOST, port or free_port())
    rows = []
    try:
        for label, package, overrides in variants:
            log.info("serving %s (%s) at %s", label, package.manifest.version, server.url)
            server.deploy(package.root, overrides)
            run_loadtest(
                LoadTestConfig(
                    host=server.url,
                    out_dir=out / "loadtests",
                    users=users,
                    duration_s=WARMUP_S,
                    label=f"{label}-warmup",
                )
            )
            load = run_loadtest(
                LoadTestConfig(
                    host=server.url,
                    out_dir=out / "loadtests",
                    users=users,
                    duration_s=duration_s,
                    max_inputs=max_inputs,
                    slo_p99_ms=slo_p99_ms,
                    label=label,
                )
            )
            rows.append(_row(label, package, load, slo_p99_ms, serving_config(package, overrides, server.threads)))
    finally:
        server.stop()
    base, opt = rows
    ratios = {
        "throughput": opt["rps"] / base["rps"],
        "p50_speedup": base["p50_ms"] / opt["p50_ms"],
        "p99_speedup": base["p99_ms"] / opt["p99_ms"],
        "size": opt["size_mb"] / base["size_mb"],
    }
    if slo_p99_ms is not None:
        ratios["goodput"] = opt["goodput_rps"] / base["goodput_rps"] if base["goodput_rps"] else float("inf")
    context = {
        "users": users,
        "duration_s": duration_s,
        "max_inputs": max_inputs,
        "slo_p99_ms": slo_p99_ms,
        "machine": f"{platform.machine()} with {os.cpu_count()} cores",
    }
    comparison = {
        "rows": rows,
        "ratios": ratios,
        "context": context,
        "ok": all(r["failures"] == 0 for r in rows),
        "elapsed_s": time.monotonic() - started,
    }
    text = render(rows, ratios, context)
    (out / "comparison.md").write_text(text + "\n", encoding="utf-8")
    (out / "comparison.json").write_text(json.dumps(comparison, indent=2) + "\n", encoding="utf-8")
    print(text)
    print(f"\nwritten: {out / 'comparison.md'}, {out / 'comparison.json'}, {packages}, {out / 'loadtests'}")
    return comparison
