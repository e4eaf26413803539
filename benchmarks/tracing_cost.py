"""What tracing costs a request: the spans of one request made in-process (off vs on), and a served closed-loop
load with tracing off, on (every request sampled, exported over OTLP/HTTP to a local receiver) and off again.

    .venv/bin/python benchmarks/tracing_cost.py [--package DIR] [--workers 16] [--seconds 12]

Writes ``benchmarks/results/tracing_cost.md``. Without ``--package`` it optimizes the bundled MiniLM with the
default recipe first (kept under runs/bench-grpc, shared with benchmarks/grpc_vs_http.py).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.grpc_vs_http import describe_package, http_load, load_arguments, package_of  # noqa: E402
from corpus import load_split  # noqa: E402

RESULT_FILE = ROOT / "benchmarks" / "results" / "tracing_cost.md"
SPANS_PER_REQUEST = 7  # request, queue, batch, tokenize, model, serialize (+ the end)


def one_request(tracing: Any) -> None:
    """The spans optiserve makes for one request served alone in its batch (no incoming trace)."""
    from serving.tracing import end_request

    span = tracing.start_request("POST /v1/embeddings", {}, {})
    tracing.record("queue", span, 0.001)
    batch = tracing.record("batch", span, 0.004, {"optiserve.batch_size": 1}, links=[span])
    tracing.record("tokenize", batch, 0.001)
    tracing.record("model", batch, 0.003)
    with tracing.child("serialize", span):
        pass
    end_request(span, 200, {"http.route": "/v1/embeddings"})


def in_process(requests: int = 20000) -> dict[str, float]:
    """Microseconds per request of making its spans: off, on (every request, and 1 in 10), batched export to an
    exporter that drops them."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, TraceIdRatioBased

    from serving.tracing import Tracing

    class Drop(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    result = {}
    providers = {"on": TracerProvider(sampler=ALWAYS_ON), "on, 1 in 10": TracerProvider(sampler=TraceIdRatioBased(0.1))}
    tracings = {"off": Tracing()}
    for label, provider in providers.items():
        provider.add_span_processor(BatchSpanProcessor(Drop(), max_queue_size=65536))
        tracings[label] = Tracing(provider.get_tracer("bench"), provider)
    for label, tracing in tracings.items():
        one_request(tracing)
        started = time.perf_counter()
        for _ in range(requests):
            one_request(tracing)
        result[label] = 1e6 * (time.perf_counter() - started) / requests
    for provider in providers.values():
        provider.shutdown()
    return result


def served(package: Path, workers: int, seconds: float) -> list[tuple[str, dict]]:
    from modelpkg.package import read_manifest
    from serving.launcher import start
    from serving.ports import free_port
    from tests.support.otlp import OtlpReceiver

    model, texts = read_manifest(package).name, load_split("heldout")
    rounds = []
    with OtlpReceiver() as receiver:
        every = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_TRACES_SAMPLER": "always_on"}
        tenth = {**every, "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
        server = start("127.0.0.1", free_port(), num_cpus=2, threads=1)
        try:
            variants = (("off", {}), ("on, every request", every), ("on, 1 in 10", tenth), ("off again", {}))
            for label, env in variants:
                server.deploy(package, env=env)
                asyncio.run(http_load(server.url, model, texts[:50], workers, 3))  # warm-up
                stats = asyncio.run(http_load(server.url, model, texts, workers, seconds))
                stats["spans_received"] = len(receiver.spans)
                rounds.append((label, stats))
                print(label, stats, flush=True)
        finally:
            server.stop()
    return rounds


def summary(package: Path, micro: dict[str, float], rounds: list[tuple[str, dict]], command: str) -> str:
    from modelpkg.hardware import detect
    from modelpkg.package import read_manifest

    rows = [
        f"| {label} | {s['rps']:.1f} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {s['failures']} | "
        f"{s['spans_received']} |"
        for label, s in rounds
    ]
    return "\n".join(
        [
            "# What tracing costs a request",
            "",
            f"Command: `{command}`  ",
            f"CPU: {detect().describe()}; package: {describe_package(read_manifest(package))}",
            "",
            f"Making one request's {SPANS_PER_REQUEST - 1} spans in-process (request, queue, batch, tokenize, model,",
            f"serialize; batched export): **{micro['on']:.1f} us** on for every request, {micro['on, 1 in 10']:.1f} us"
            f" on for 1 in 10, {micro['off']:.2f} us off.",
            "",
            "Served, one sentence per request, aiohttp closed loop on the same machine (KServe v2 JSON over HTTP):",
            "",
            "| tracing | req/s | p50 ms | p99 ms | failures | spans received (cumulative) |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


def main() -> None:
    args = load_arguments(__doc__ or "", 12.0).parse_args()
    package = package_of(args)
    micro = in_process()
    print("in-process us per request", micro, flush=True)
    rounds = served(package, args.workers, args.seconds)
    text = summary(package, micro, rounds, "python " + " ".join(sys.argv))
    print(text)
    RESULT_FILE.write_text(text)


if __name__ == "__main__":
    main()
