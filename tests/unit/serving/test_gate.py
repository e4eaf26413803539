"""The ASGI gate in front of every route (serving/http.py ``Gate``), run on a real event loop around a real FastAPI
app: body time and size limits, malformed lengths, and what the metrics record for clients that go away."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from fastapi import FastAPI, Request
from prometheus_client.parser import text_string_to_metric_families
from starlette.responses import Response

from serving import http
from serving.limits import ServerLimits
from serving.metrics import exposition

Receive = Callable[[], Awaitable[dict]]


def _app(route_delay_s: float = 0.0) -> FastAPI:
    api = FastAPI()
    http.install(api)

    @api.post("/v1/echo")
    async def echo(request: Request) -> Response:
        body = await request.body()
        await asyncio.sleep(route_delay_s)
        return Response(body, media_type="application/octet-stream")

    return api


def _scope(headers: dict[bytes, bytes] | None = None, path: str = "/v1/echo") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": list((headers or {}).items()),
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }


async def _call(app: FastAPI, scope: dict[str, Any], receive: Receive) -> tuple[int | None, bytes]:
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next((m["status"] for m in sent if m["type"] == "http.response.start"), None)
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def _trickle(chunks: list[bytes], every_s: float) -> Receive:
    """A client that sends ``chunks`` one at a time, ``every_s`` apart, and never finishes."""
    pending = list(chunks)

    async def receive() -> dict:
        await asyncio.sleep(every_s)
        if pending:
            return {"type": "http.request", "body": pending.pop(0), "more_body": True}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    return receive


def _codes(route: str = "unmatched") -> dict[str, float]:
    """This process's ``optiserve_requests_total`` for ``route``, by status code."""
    text = exposition().decode()
    counts = {code: 0.0 for code in ("200", "400", "408", "413", "499", "500")}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "optiserve_requests_total" and sample.labels.get("route") == route:
                counts[sample.labels["code"]] = counts.get(sample.labels["code"], 0.0) + sample.value
    return counts


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch) -> ServerLimits:
    small = ServerLimits(max_body_bytes=1000, body_timeout_s=0.3)
    monkeypatch.setattr(http, "LIMITS", small)
    return small


def test_a_slow_upload_is_answered_408_within_the_body_timeout(limits: ServerLimits) -> None:
    # The client never finishes its body (after 90 bytes it goes silent for an hour): only the deadline ends it.
    status, body = asyncio.run(
        _call(_app(), _scope({b"content-length": b"100"}), _trickle([b"0123456789"] * 9, every_s=0.1))
    )
    assert status == 408
    assert orjson.loads(body)["error"]["code"] == "body_timeout"


def test_a_streamed_body_past_the_size_limit_is_413(limits: ServerLimits) -> None:
    status, body = asyncio.run(_call(_app(), _scope(), _trickle([b"x" * 600] * 3, every_s=0.0)))
    assert status == 413 and orjson.loads(body)["error"]["code"] == "body_too_large"


@pytest.mark.parametrize(("length", "status"), [("²".encode(), 400), (b"9" * 5000, 413), (b"abc", 400), (b"5000", 413)])
def test_malformed_or_huge_content_lengths_are_4xx(limits: ServerLimits, length: bytes, status: int) -> None:
    async def never() -> dict:
        raise AssertionError("the body must not be read")

    got, body = asyncio.run(_call(_app(), _scope({b"content-length": length}), never))
    assert got == status and "error" in orjson.loads(body)


def test_a_client_gone_while_sending_is_counted_499_not_as_an_error(limits: ServerLimits) -> None:
    async def leaves() -> dict:
        return {"type": "http.disconnect"}

    before = _codes()
    status, _ = asyncio.run(_call(_app(), _scope(), leaves))
    after = _codes()
    assert status is None  # nobody to answer
    assert after["499"] == before["499"] + 1
    assert (after["400"], after["500"]) == (before["400"], before["500"])


def test_a_request_cancelled_in_its_route_is_counted_499(limits: ServerLimits) -> None:
    async def body_then_wait() -> dict:
        return {"type": "http.request", "body": b"hi", "more_body": False}

    async def scenario() -> None:
        task = asyncio.ensure_future(_call(_app(route_delay_s=10), _scope(), body_then_wait))
        await asyncio.sleep(0.1)
        task.cancel()  # what Serve does when the client disconnects
        with pytest.raises(asyncio.CancelledError):
            await task

    before = _codes("/v1/echo")
    asyncio.run(scenario())
    after = _codes("/v1/echo")
    assert after["499"] == before["499"] + 1 and after["500"] == before["500"]
