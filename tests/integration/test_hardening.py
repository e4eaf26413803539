"""Limits, authentication, overload and deadlines on a live server, redeployed with small limits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import InferenceServerException

from modelpkg.errors import PackageError
from modelpkg.runtimes.onnx import check_external_data
from serving.limits import ServerLimits
from tests.support import grpc as grpc_client
from tests.support.load import post_concurrently

TOKEN = "s3cret-token"
SMALL_LIMITS = {
    "OPTISERVE_MAX_BODY_BYTES": "8192",
    "OPTISERVE_MAX_INPUTS": "8",
    "OPTISERVE_MAX_INPUT_CHARS": "4000",
    "OPTISERVE_ON_OVERFLOW": "reject",
    "OPTISERVE_API_TOKEN": TOKEN,
}
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUEUE_TIMEOUT_S = 0.1  # far above a lone request's wait, far below a burst of BURST one-item batches
BURST = 100


@pytest.fixture(scope="module")
def hardened(server, minilm_packages) -> Iterator:
    """The shared server, redeployed with small limits, a token and a tiny queue; restored afterwards."""
    try:
        server.deploy(minilm_packages.package.root, {"max_batch_size": 2, "max_queued_items": 4}, env=SMALL_LIMITS)
        yield server
    finally:
        server.deploy(minilm_packages.package.root)


def _assert_json_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert error["code"] == code and set(error) == {"message", "type", "code"}
    assert "Traceback" not in response.text
    return error


@pytest.mark.serve
def test_token_guards_inference_routes_only(hardened) -> None:
    url = f"{hardened.url}/v1/embeddings"
    missing = httpx.post(url, json={"input": "hi"}, timeout=30)
    _assert_json_error(missing, 401, "invalid_api_key")
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.post(url, json={"input": "hi"}, headers={"Authorization": "Bearer nope"}, timeout=30)
    _assert_json_error(wrong, 401, "invalid_api_key")
    assert httpx.post(url, json={"input": "hi"}, headers=AUTH, timeout=30).status_code == 200
    for open_route in ("/v2/health/live", "/v2/health/ready", "/metrics"):
        assert httpx.get(f"{hardened.url}{open_route}", timeout=30).status_code == 200


@pytest.mark.serve
def test_token_guards_grpc_inference_from_its_metadata(hardened, minilm_packages) -> None:
    client = grpc_client.client(hardened)
    name = minilm_packages.package.manifest.name
    for headers in (None, {"authorization": "Bearer nope"}):
        with pytest.raises(InferenceServerException) as refused:
            client.infer(name, [grpc_client.text_input(["hi"])], headers=headers)
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        assert refused.value.message() == "missing or invalid bearer token"
    answered = client.infer(name, [grpc_client.text_input(["hi"])], headers={"authorization": AUTH["Authorization"]})
    assert answered.as_numpy("embedding").shape == (1, 384)
    assert client.is_server_ready()  # health and server metadata need no token, as over HTTP
    too_many = grpc_client.text_input(["x"] * 9)  # OPTISERVE_MAX_INPUTS=8
    with pytest.raises(InferenceServerException) as refused:
        client.infer(name, [too_many], headers={"authorization": AUTH["Authorization"]})
    assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED" and "at most 8" in refused.value.message()


@pytest.mark.serve
def test_body_limit_holds_for_declared_and_streamed_bodies(hardened) -> None:
    url = f"{hardened.url}/v1/embeddings"
    big = b'{"input": "' + b"a" * 9000 + b'"}'
    declared = httpx.post(url, content=big, headers={**AUTH, "Content-Type": "application/json"}, timeout=30)
    _assert_json_error(declared, 413, "body_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        for start in range(0, len(big), 1000):
            yield big[start : start + 1000]

    streamed = httpx.post(url, content=chunks(), headers={**AUTH, "Content-Type": "application/json"}, timeout=30)
    _assert_json_error(streamed, 413, "body_too_large")


@pytest.mark.serve
def test_input_count_length_and_token_overflow_limits(hardened) -> None:
    url = f"{hardened.url}/v1/embeddings"
    too_many = httpx.post(url, json={"input": ["x"] * 9}, headers=AUTH, timeout=30)
    assert "at most 8 inputs" in _assert_json_error(too_many, 413, "too_many_inputs")["message"]
    too_long = httpx.post(url, json={"input": "y" * 4001}, headers=AUTH, timeout=30)
    assert "at most 4000" in _assert_json_error(too_long, 422, "invalid_value")["message"]
    many_tokens = " ".join(["word"] * 400)  # 400+ tokens, under the character limit
    rejected = httpx.post(url, json={"input": ["short", many_tokens]}, headers=AUTH, timeout=30)
    assert "item 1" in _assert_json_error(rejected, 422, "input_too_long")["message"]


@pytest.mark.serve
def test_full_queue_answers_503_with_retry_after_and_loses_nothing_accepted(hardened, figures) -> None:
    texts = [f"sentence number {i} about queues and overload" for i in range(48)]
    replies = post_concurrently(f"{hardened.url}/v1/embeddings", [{"input": t} for t in texts], AUTH)
    codes = [r.status_code for r in replies]
    assert set(codes) <= {200, 503}
    assert codes.count(503) > 0 and codes.count(200) > 0
    for reply in replies:
        if reply.status_code == 503:
            _assert_json_error(reply, 503, "overloaded")
            assert reply.headers["retry-after"] == "1"
        else:
            assert len(reply.json()["data"][0]["embedding"]) == 384
    rejected = sorted(r.elapsed.total_seconds() * 1e3 for r in replies if r.status_code == 503)
    accepted = sorted(r.elapsed.total_seconds() * 1e3 for r in replies if r.status_code == 200)
    figures["overload"] = {
        "requests": len(replies),
        "accepted": len(accepted),
        "rejected_503": len(rejected),
        "accepted_median_ms": round(accepted[len(accepted) // 2]),
        "rejected_median_ms": round(rejected[len(rejected) // 2]),
        "rejected_max_ms": round(rejected[-1]),
        "max_queued_items": 4,
    }
    print(
        f"\noverload: {len(replies)} concurrent requests, {len(accepted)} accepted "
        f"(median {accepted[len(accepted) // 2]:.0f} ms), {len(rejected)} got 503 "
        f"(median {rejected[len(rejected) // 2]:.0f} ms, max {rejected[-1]:.0f} ms)"
    )


@pytest.mark.serve
def test_requests_past_their_queue_deadline_are_dropped_before_running(server, minilm_packages, figures) -> None:
    from loadtests.scrape import histogram_delta, scrape

    package = minilm_packages.package.root
    url = f"{server.url}/v1/embeddings"
    try:
        tight = {"max_batch_size": 1, "batch_wait_timeout_s": 0.0, "queue_timeout_s": QUEUE_TIMEOUT_S}
        server.deploy(package, {**tight, "max_queued_items": 10 * BURST, "max_queued_s": 1e3})  # deadlines, no 503s
        before = scrape(f"{server.url}/metrics")
        alone = httpx.post(url, json={"input": "a request with nothing queued ahead of it"}, timeout=60)
        # A burst far longer than the deadline: one item per batch, each taking milliseconds.
        replies = post_concurrently(url, [{"input": f"text number {i}"} for i in range(BURST)], {})
        after = scrape(f"{server.url}/metrics")
    finally:
        server.deploy(package)
    assert alone.status_code == 200
    codes = [r.status_code for r in replies]
    assert set(codes) <= {200, 504} and codes.count(504) > 0
    for reply in replies:
        if reply.status_code == 504:
            _assert_json_error(reply, 504, "queue_timeout")
    computed = histogram_delta(before, after, "optiserve_batch_size").total
    print(
        f"\ndeadline: {codes.count(200)} served, {codes.count(504)} dropped past a "
        f"{QUEUE_TIMEOUT_S * 1e3:.0f} ms queue deadline, {computed:.0f} items computed"
    )
    figures["deadline"] = {
        "requests": len(codes),
        "served": codes.count(200),
        "dropped_504": codes.count(504),
        "items_computed": computed,
        "queue_timeout_s": QUEUE_TIMEOUT_S,
    }
    assert computed == codes.count(200) + 1  # dropped requests never reached the model


@pytest.mark.serve
def test_default_policy_truncates_and_says_so(server) -> None:
    long_text = " ".join(["token"] * 400)
    data = httpx.post(f"{server.url}/v1/embeddings", json={"input": ["short", long_text]}, timeout=30).json()["data"]
    assert [d["truncated"] for d in data] == [False, True]


def test_limits_from_environment_are_validated(tmp_path: Path) -> None:
    assert ServerLimits.from_env({}) == ServerLimits()
    limits = ServerLimits.from_env({"OPTISERVE_MAX_INPUTS": "3", "OPTISERVE_ON_OVERFLOW": "reject"})
    assert (limits.max_inputs, limits.on_overflow) == (3, "reject")
    with pytest.raises(ValueError, match="OPTISERVE_MAX_INPUTS='-1': must be an integer >= 1"):
        ServerLimits.from_env({"OPTISERVE_MAX_INPUTS": "-1"})
    with pytest.raises(ValueError, match="must be one of truncate, reject"):
        ServerLimits.from_env({"OPTISERVE_ON_OVERFLOW": "drop"})
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    limits = ServerLimits.from_env({"OPTISERVE_API_TOKEN_FILE": str(token_file)})
    assert limits.authorized("Bearer from-file") and limits.authorized("bearer  from-file")
    assert not limits.authorized(None) and not limits.authorized("Bearer other") and not limits.authorized("from-file")
    assert ServerLimits().authorized(None)


def test_onnx_external_data_outside_the_package_is_refused(tmp_path: Path) -> None:
    weight = numpy_helper.from_array(np.ones((4, 4), dtype=np.float32), name="w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [weight],
    )
    model = helper.make_model(graph)
    inside = tmp_path / "pkg" / "model.onnx"
    inside.parent.mkdir()
    onnx.save_model(model, str(inside), save_as_external_data=True, location="weights.data", size_threshold=0)
    check_external_data(inside)  # data beside the model: fine
    saved = onnx.load(str(inside), load_external_data=False)
    for entry in saved.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../outside.data"
    onnx.save_model(saved, str(inside))
    with pytest.raises(PackageError, match="outside the package"):
        check_external_data(inside)


LONG_TEXT = "a sentence of ordinary words that a tokenizer cuts into about one token per word " * 15  # 1,200 chars


@pytest.mark.serve
def test_a_request_too_big_for_its_deadline_is_refused_up_front_and_small_ones_are_not_starved(
    server, minilm_packages
) -> None:
    from loadtests.scrape import histogram_delta, scrape

    package = minilm_packages.package.root
    url = f"{server.url}/v1/embeddings"
    try:
        server.deploy(package, {"max_request_s": 1.0})
        before = scrape(f"{server.url}/metrics")
        # The attack at small scale: 400 distinct inputs x 1,200 characters, far more than 1 s of work
        # here (identical inputs would be computed once, and be little work).
        refused = httpx.post(url, json={"input": [f"{i} {LONG_TEXT}" for i in range(400)]}, timeout=60)
        after = scrape(f"{server.url}/metrics")
        message = _assert_json_error(refused, 413, "request_too_large")["message"]
        assert "max_request_s" in message and "1 s" in message
        assert histogram_delta(before, after, "optiserve_batch_size").total == 0  # refused before any work

    finally:
        server.deploy(package)
    # On the default deployment: a big request that is allowed, then a burst of small ones: they finish first.
    big = {"input": [f"{i} {LONG_TEXT[:600]}" for i in range(96)]}
    finished = asyncio.run(_big_then_small(url, big, [{"input": f"small request {i}"} for i in range(12)]))
    assert all(status == 200 for status, _ in finished), finished
    big_done = finished[0][1]
    assert all(done < big_done for _, done in finished[1:])  # each got a slot in the next batches


async def _big_then_small(url: str, big: dict, small: list[dict]) -> list[tuple[int, float]]:
    """POST ``big``, then (once it is queued) every ``small`` body at once; (status, finish time) of each."""
    async with httpx.AsyncClient(timeout=120) as client:

        async def post(body: dict, delay_s: float) -> tuple[int, float]:
            await asyncio.sleep(delay_s)
            response = await client.post(url, json=body)
            return response.status_code, time.monotonic()

        return list(await asyncio.gather(post(big, 0.0), *(post(body, 0.2) for body in small)))


def test_a_run_of_tiny_requests_then_an_ordinary_burst_are_all_admitted(minilm_packages) -> None:
    """The sequence seen in an earlier round (a server sent "a", "b c" while another started on the same cores):
    60 requests of a few tokens, then 96 ordinary sentences at once. A per-token estimate learned from the tiny
    batches (nearly all fixed cost) refused the burst as overloaded; the fixed-plus-per-token fit admits it."""
    from modelpkg.errors import OverloadedError
    from serving.replica import ModelRunner

    async def scenario() -> list[object]:
        runner = ModelRunner(str(minilm_packages.package.root), threads=1)
        for text in ["a", "b c"] * 30:
            await runner.infer([text], cache="bypass")
        burst = [runner.infer([f"{i} {LONG_TEXT[:60]}"], cache="bypass") for i in range(96)]  # ~0.2 s of work
        return list(await asyncio.gather(*burst, return_exceptions=True))

    results = asyncio.run(scenario())
    assert [r for r in results if isinstance(r, OverloadedError)] == []
    assert all(not isinstance(r, BaseException) for r in results), results
