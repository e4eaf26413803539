"""serving/tracing.py: off (and making nothing) unless the standard variables name an OTLP endpoint; on, spans
continue the caller's trace, timed-elsewhere work lands where it happened, and the global provider is left alone."""

from __future__ import annotations

import time

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from serving.tracing import Tracing, configured, end_request

TRACE_ID, PARENT_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_tracing_is_on_only_where_an_endpoint_is_configured(env, on) -> None:
    assert configured(env) is on
    assert Tracing.from_environment(env).enabled is on


def test_off_makes_no_span() -> None:
    off = Tracing()
    assert off.start_request("POST /v1/embeddings", {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}, {}) is None
    assert off.record("queue", None, 0.1) is None
    with off.child("serialize", None):
        pass
    end_request(None, 200)


def test_on_the_provider_is_its_own_not_the_global_one() -> None:
    before = trace.get_tracer_provider()
    tracing = Tracing.from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert tracing.enabled and trace.get_tracer_provider() is before and tracing.provider is not before
    tracing.provider.shutdown()


def test_spans_continue_the_trace_and_sit_where_the_work_happened() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider.get_tracer("test"), provider)
    carrier = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
    first = tracing.start_request("POST /v1/embeddings", carrier, {"optiserve.request_id": "r1"})
    second = tracing.start_request("POST /v1/embeddings", {}, {})
    ended = time.time_ns()
    tracing.record("queue", first, 0.25, ended_ns=ended)
    batch = tracing.record("batch", first, 0.5, {"optiserve.batch_size": 2}, links=[first, second])
    tracing.record("model", batch, 0.25)  # under an ended span: children of a batch are made after it
    with tracing.child("serialize", first):
        pass
    end_request(first, 200)
    end_request(second, 503)
    spans = {
        span.name if span.name != "POST /v1/embeddings" else span.context.span_id: span
        for span in exporter.get_finished_spans()
    }
    request = spans[first.get_span_context().span_id]
    assert format(request.context.trace_id, "032x") == TRACE_ID and format(request.parent.span_id, "016x") == PARENT_ID
    for child in ("queue", "batch", "serialize"):
        assert spans[child].parent.span_id == request.context.span_id
    assert spans["model"].parent.span_id == batch.get_span_context().span_id
    assert spans["queue"].end_time == ended and spans["queue"].end_time - spans["queue"].start_time == 250_000_000
    assert [link.context.span_id for link in batch.links] == [
        first.get_span_context().span_id,
        second.get_span_context().span_id,
    ]
    assert spans[second.get_span_context().span_id].status.status_code == StatusCode.ERROR  # a 503
