"""OpenTelemetry traces from a served request, received by a real OTLP/HTTP endpoint: a span per request that
continues the caller's W3C ``traceparent``, with its queue, batch (tokenize, model) and serialize children, over
HTTP and gRPC; the batch span links to every request it served."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from tests.integration.test_server import MODEL
from tests.support import grpc as grpc_client
from tests.support.otlp import OtlpReceiver, attributes

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest.fixture(scope="module")
def traced(server, minilm_packages, receiver) -> Iterator:
    """The shared server with tracing on (the standard variables, as an operator sets them) and Ray Serve's access
    log on; both off again after."""
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    os.environ["OPTISERVE_ACCESS_LOG"] = "1"  # read where the deployment is built, in this process
    try:
        server.deploy(minilm_packages.package.root, env=env)
        yield server
    finally:
        del os.environ["OPTISERVE_ACCESS_LOG"]
        server.deploy(minilm_packages.package.root)


def _access_log_lines(fragment: str) -> list[str]:
    """Lines of this Ray session's replica logs (Ray Serve's access log among them) that hold ``fragment``."""
    import ray._private.worker as worker  # the session directory of the cluster this process is connected to

    logs = Path(worker._global_node.get_session_dir_path()) / "logs" / "serve"
    return [
        line
        for path in logs.glob("replica_*.log")
        for line in path.read_text(errors="replace").splitlines()
        if fragment in line
    ]


def _traceparent() -> tuple[str, str, str]:
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    return trace_id, parent_id, f"00-{trace_id}-{parent_id}-01"


def _request_span(receiver: OtlpReceiver, trace_id: str, name: str):
    return receiver.wait_for(
        lambda spans: next((s for s in spans if s.trace_id.hex() == trace_id and s.name == name), None)
    )


def _linked(span) -> set[bytes]:
    return {link.span_id for link in span.links}


def _children(receiver: OtlpReceiver, parent, names: set[str]) -> dict[str, object]:
    def found(spans):
        children = {s.name: s for s in spans if s.parent_span_id == parent.span_id}
        return children if names <= set(children) else None

    return receiver.wait_for(found)


def test_a_request_continues_the_callers_trace_with_its_stages(traced, receiver) -> None:
    trace_id, parent_id, traceparent = _traceparent()
    headers = {"traceparent": traceparent, "x-request-id": "traced-1"}
    text = f"a traced sentence {uuid.uuid4().hex}"  # not in the response cache: it must run in a batch
    response = httpx.post(f"{traced.url}/v1/embeddings", json={"input": [text]}, headers=headers, timeout=30)
    assert response.status_code == 200, response.text[:300]

    request = _request_span(receiver, trace_id, "POST /v1/embeddings")
    assert request.parent_span_id.hex() == parent_id
    seen = attributes(request)
    assert seen["optiserve.request_id"] == "traced-1" and seen["optiserve.model"] == MODEL
    assert (seen["http.response.status_code"], seen["optiserve.items"]) == (200, 1) and seen["optiserve.tokens"] > 0
    children = _children(receiver, request, {"queue", "serialize"})
    assert children["queue"].start_time_unix_nano >= request.start_time_unix_nano
    # the same id in the access log line of the request (X-Request-Id kept by the ingress)
    deadline = time.monotonic() + 15
    while not (lines := _access_log_lines("traced-1")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert any("POST /v1/embeddings 200" in line for line in lines), lines

    batch = receiver.wait_for(
        lambda spans: next((s for s in spans if s.name == "batch" and request.span_id in _linked(s)), None)
    )
    assert attributes(batch)["optiserve.batch_size"] >= 1
    stages = _children(receiver, batch, {"tokenize", "model"})
    assert stages["tokenize"].end_time_unix_nano <= stages["model"].start_time_unix_nano + 1000


def test_one_batch_span_links_every_request_it_served(traced, receiver) -> None:
    traceparents = [_traceparent() for _ in range(24)]
    bodies = [{"input": [f"sentence {i} {uuid.uuid4().hex}"]} for i in range(len(traceparents))]

    async def fire() -> list[int]:
        async with httpx.AsyncClient(timeout=60) as client:
            posts = [
                client.post(f"{traced.url}/v1/embeddings", json=body, headers={"traceparent": traceparent})
                for body, (_, _, traceparent) in zip(bodies, traceparents, strict=True)
            ]
            return [response.status_code for response in await asyncio.gather(*posts)]

    assert set(asyncio.run(fire())) == {200}
    requests = {_request_span(receiver, trace_id, "POST /v1/embeddings").span_id for trace_id, _, _ in traceparents}
    shared = receiver.wait_for(
        lambda spans: [s for s in spans if s.name == "batch" and len(_linked(s) & requests) >= 2]
    )
    batch = shared[0]
    assert attributes(batch)["optiserve.requests"] == len(batch.links)
    assert batch.parent_span_id in _linked(batch)  # a child of the request that opened it


def test_a_grpc_call_continues_the_trace_in_its_metadata(traced, receiver) -> None:
    trace_id, parent_id, traceparent = _traceparent()
    client = grpc_client.client(traced)
    text = f"a traced call {uuid.uuid4().hex}"
    client.infer(MODEL, [grpc_client.text_input([text])], headers={"traceparent": traceparent, "x-request-id": "g-9"})
    call = _request_span(receiver, trace_id, "inference.GRPCInferenceService/ModelInfer")
    assert call.parent_span_id.hex() == parent_id
    seen = attributes(call)
    assert (seen["rpc.system"], seen["rpc.method"], seen["optiserve.request_id"]) == ("grpc", "ModelInfer", "g-9")
    assert seen["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
    _children(receiver, call, {"queue", "serialize"})
