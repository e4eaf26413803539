"""OpenTelemetry traces of requests, exported over OTLP/HTTP where an endpoint is configured; off, and free
(no span is made), where none is.

Configured by the standard variables, read in each replica: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_ENDPOINT`` turns tracing on (with ``OTEL_EXPORTER_OTLP_HEADERS``, ``..._TIMEOUT`` and the
rest as the exporter reads them); ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG`` sample (default:
``parentbased_always_on``: a sampled incoming ``traceparent`` is followed); ``OTEL_SERVICE_NAME`` names the
service (default ``optiserve``); ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turns it off.

The spans of one request (``http.route`` or ``rpc.method``, ``optiserve.request_id``, model, version, items,
tokens), continuing an incoming W3C ``traceparent``::

    POST /v1/embeddings (server)           whole request, as the replica sees it
    ├── queue                              admitted and waiting until its first item is in a running batch
    ├── batch  ─ links to every request    one dynamic batch (size, tokens, padded tokens): a child of the request
    │   ├── tokenize                       whose item opened it, linked from the batch to each request it served
    │   └── model                          the runtime's model calls
    └── serialize                          the response body

The tracer provider is this module's own, never the global one, so Ray Serve's own tracing
(``RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH``, which sets the global provider) and optiserve's live side by side.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("optiserve")
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
DEFAULT_SERVICE_NAME = "optiserve"


def configured(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the standard variables ask for traces: an OTLP endpoint, and the SDK and exporter not turned off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES)


class Tracing:
    """Makes a request's spans, or nothing at all when tracing is off (every method then returns at once)."""

    def __init__(self, tracer: Any = None, provider: Any = None) -> None:
        self.tracer = tracer
        self.provider = provider

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    @classmethod
    def from_environment(cls, env: Mapping[str, str] = os.environ) -> Tracing:
        if not configured(env):
            return cls()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from modelpkg.version import __version__

        name = env.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME
        resource = Resource.create({"service.name": name, "service.version": __version__})
        provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER(_ARG)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # endpoint etc. from OTEL_EXPORTER_*
        log.info("tracing: OTLP/HTTP export as %s, sampler %s", name, provider.sampler.get_description())
        return cls(provider.get_tracer("optiserve", __version__), provider)

    def start_request(self, name: str, carrier: Mapping[str, str], attributes: dict[str, Any]) -> Any:
        """A request's server span, continuing the trace ``carrier``'s ``traceparent`` names (if any)."""
        if self.tracer is None:
            return None
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        parent = TraceContextTextMapPropagator().extract(carrier)
        return self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)

    def record(
        self,
        name: str,
        parent: Any,
        seconds: float,
        attributes: dict[str, Any] | None = None,
        links: Sequence[Any] = (),
        ended_ns: int | None = None,
    ) -> Any:
        """An ended child span of ``parent`` that lasted ``seconds`` up to ``ended_ns`` (default: now), for work
        timed elsewhere (a batch run in a worker thread, a wait in the queue). ``links``: spans it served. Nothing
        under a parent that is not sampled."""
        if self.tracer is None or not sampled(parent):
            return None
        from opentelemetry import trace
        from opentelemetry.trace import Link

        end = ended_ns if ended_ns is not None else time.time_ns()
        span = self.tracer.start_span(
            name,
            context=trace.set_span_in_context(parent),
            attributes=attributes,
            links=[Link(linked.get_span_context()) for linked in links],
            start_time=end - int(seconds * 1e9),
        )
        span.end(end_time=end)
        return span

    @contextmanager
    def child(self, name: str, parent: Any) -> Iterator[None]:
        """A child span of ``parent`` around the block (nothing when tracing is off, or the parent is missing
        or not sampled)."""
        if self.tracer is None or not sampled(parent):
            yield
            return
        from opentelemetry import trace

        span = self.tracer.start_span(name, context=trace.set_span_in_context(parent))
        try:
            yield
        finally:
            span.end()

    def shutdown(self) -> None:
        """Export what is buffered and stop (a replica that stops)."""
        if self.provider is not None:
            self.provider.shutdown()


def sampled(span: Any) -> bool:
    """Whether ``span`` is part of a sampled trace (ended or not): its children are worth making."""
    return span is not None and bool(span.get_span_context().trace_flags.sampled)


def end_request(span: Any, status: int, attributes: dict[str, Any] | None = None) -> None:
    """End a request span with its (HTTP-equivalent) status: a 5xx marks it failed."""
    if span is None or not span.is_recording():
        return
    from opentelemetry.trace import Status, StatusCode

    span.set_attributes({**(attributes or {}), "http.response.status_code": status})
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))
    span.end()


_TRACING: Tracing | None = None


def tracing() -> Tracing:
    """This process's tracing, from its environment (made once)."""
    global _TRACING
    if _TRACING is None:
        _TRACING = Tracing.from_environment()
    return _TRACING
