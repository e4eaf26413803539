"""A real Ray Serve app on 127.0.0.1 serving the optimized MiniLM package, driven by real HTTP clients."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from corpus import load_split
from modelpkg.package import load_package
from modelpkg.pipeline import TextPipeline
from tests.support.direct import direct_pipeline
from tests.support.load import post_concurrently

pytestmark = pytest.mark.serve
TEXTS = load_split("heldout")[:40]
MODEL = "all-MiniLM-L6-v2"
NO_STORE = {"Cache-Control": "no-store"}  # computed afresh, whatever earlier tests sent


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _post(server, body: object, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/embeddings", json=body, timeout=60, **kwargs)


def _batch_buckets(server, model: str = MODEL) -> dict[str, float]:
    buckets: dict[str, float] = {}
    for sample in _metric_samples(server)["optiserve_batch_size_bucket"]:
        if sample.labels["model"] == model:  # summed over the packages that served it (upgrades in place)
            buckets[sample.labels["le"]] = buckets.get(sample.labels["le"], 0.0) + sample.value
    return buckets


def _metric_samples(server) -> dict[str, list]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def test_embeddings_match_direct_runtime_output(server, minilm_packages) -> None:
    """A request alone on the server is batched exactly as ``run_as_served`` does, so the vectors match (with the
    call cost the replica measured: this package's int8 moves with its batch-mates, so the calls must be alike)."""
    settings = minilm_packages.package.manifest.serving
    direct = direct_pipeline(minilm_packages.package.root, (server.url, MODEL))
    response = _post(server, {"input": TEXTS, "model": MODEL})
    assert response.status_code == 200
    body = response.json()
    assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
    served = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    assert served.shape == (len(TEXTS), 384)
    assert _cosines(served, direct.run_as_served(TEXTS, settings)).min() >= 0.999
    tokens = direct.run(TEXTS)[1].real_tokens
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert body["model"] == MODEL and body["object"] == "list"
    for text in TEXTS[:3]:  # one input: one row, no padding
        single = np.array(_post(server, {"input": text}).json()["data"][0]["embedding"], dtype=np.float32)
        assert _cosines(single[None], direct.run([text])[0]).min() >= 0.999


def test_request_larger_than_one_batch_keeps_order(server, minilm_packages) -> None:
    texts = load_split("heldout")[:100]  # > max_batch_size: split over batches and reassembled in order
    whole = np.array([d["embedding"] for d in _post(server, {"input": texts}).json()["data"]], dtype=np.float32)
    assert whole.shape == (100, 384)
    singles = np.array([_post(server, {"input": t}).json()["data"][0]["embedding"] for t in texts], dtype=np.float32)
    cosines = _cosines(whole, singles)
    # int8 activations are scaled per model call, so batched and single results differ slightly; a shuffled
    # order would give unrelated sentences (cosine far below the fidelity budget).
    assert cosines.min() >= minilm_packages.package.manifest.budget.min_cosine_min


def test_openai_client_gets_normalized_384_dim_vectors(server) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    for encoding in ("float", "base64", openai.NOT_GIVEN):  # unset: the client asks for base64 and decodes it
        result = client.embeddings.create(model=MODEL, input=TEXTS[:3], encoding_format=encoding)
        vectors = np.array(
            [
                np.frombuffer(base64.b64decode(d.embedding), dtype="<f4")
                if isinstance(d.embedding, str)
                else d.embedding
                for d in result.data
            ]
        )
        assert vectors.shape == (3, 384)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
        assert result.usage.prompt_tokens > 0


def test_base64_encoding_is_little_endian_float32(server) -> None:
    as_float = _post(server, {"input": TEXTS[0]}).json()["data"][0]["embedding"]
    encoded = _post(server, {"input": TEXTS[0], "encoding_format": "base64"}).json()["data"][0]["embedding"]
    decoded = np.frombuffer(base64.b64decode(encoded), dtype="<f4")
    assert np.allclose(decoded, as_float, atol=1e-6)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_gets_a_normalized_vector(server) -> None:
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--fail-with-body",
            f"{server.url}/v1/embeddings",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps({"input": "The quick brown fox jumps over the lazy dog.", "model": MODEL}),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    vector = np.array(json.loads(out.stdout)["data"][0]["embedding"])
    assert vector.shape == (384,) and abs(np.linalg.norm(vector) - 1.0) < 1e-3


def test_concurrent_requests_form_batches_larger_than_one(server) -> None:
    def batches() -> tuple[float, float]:
        """This model's batch count and items (earlier tests leave other models' series in the metrics dir)."""
        samples = _metric_samples(server)
        count, items = (
            next(s.value for s in samples[name] if s.labels["model"] == MODEL)
            for name in ("optiserve_batch_size_count", "optiserve_batch_size_sum")
        )
        return count, items

    count_before, items_before = batches()
    buckets_before = _batch_buckets(server)
    codes = [
        r.status_code
        for r in post_concurrently(
            f"{server.url}/v1/embeddings", [{"input": t} for t in load_split("heldout")[:96]], NO_STORE
        )
    ]
    count_after, items_after = batches()
    assert codes == [200] * 96
    assert items_after - items_before == 96
    assert (items_after - items_before) / (count_after - count_before) > 1.0
    buckets_after = _batch_buckets(server)
    single_item_batches = buckets_after["1.0"] - buckets_before.get("1.0", 0.0)
    assert single_item_batches < count_after - count_before  # some batches of this test held more than one item


def test_a_request_id_is_kept_or_made_and_returned(server) -> None:
    """X-Request-Id (the ingress makes one when the client sends none, and the answer carries it), on answers and
    errors alike."""
    mine = _post(server, {"input": "a"}, headers={"X-Request-Id": "client-chosen-42"})
    made = [_post(server, {"input": "a"}).headers.get("x-request-id") for _ in range(2)]
    refused = _post(server, {"input": []}, headers={"X-Request-Id": "client-chosen-43"})
    assert mine.status_code == 200 and mine.headers["x-request-id"] == "client-chosen-42"
    assert all(made) and made[0] != made[1]
    assert refused.status_code == 422 and refused.headers["x-request-id"] == "client-chosen-43"


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b'{"input": ', 400, "not valid JSON"),
        (b"[1, 2]", 422, "should be an object"),
        (b'{"input": 123}', 422, "string or a list of strings"),
        (b'{"input": ""}', 422, "item 0 is empty"),
        (b'{"input": []}', 422, "empty list"),
        (b'{"input": ["ok", 5]}', 422, "item 1 must be a string"),
        (b'{"input": [[1, 2, 3]]}', 422, "token-id inputs are not supported"),
        (b'{"input": "x", "bogus": 1}', 422, "bogus"),
        (b'{"input": "x", "encoding_format": "int8"}', 422, "encoding_format"),
        (b'{"input": "x", "model": "gpt-9"}', 404, "not served here"),
        (b'{"input": "x", "dimensions": 12}', 422, "returns 384"),
        (b'{"input": "x", "dimensions": "384"}', 422, "valid integer"),
        (b'{"input": ["ok", "\\u200b\\ufeff\\u0000"]}', 422, "item 1 is empty"),
        (b'{"input": "x", "user": [' + b",".join([b"[]"] * 20_000) + b"]}", 422, "JSON arrays and objects"),
        (b'{"input": "x", "model": "' + b"m" * 100_000 + b'"}', 404, "(100000 characters)"),
        (b"{}", 422, "input"),
        (b"", 400, "not valid JSON"),
    ],
)
def test_bad_requests_get_json_4xx_errors(server, body: bytes, status: int, fragment: str) -> None:
    response = httpx.post(
        f"{server.url}/v1/embeddings", content=body, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert fragment in error["message"]
    assert set(error) == {"message", "type", "code"}
    assert "Traceback" not in response.text and "/site-packages/" not in response.text
    assert len(response.content) < 2000  # nothing of the request is echoed at length


def test_unknown_route_wrong_method_and_oversized_body(server) -> None:
    missing = httpx.get(f"{server.url}/v1/nothing", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong_method = httpx.get(f"{server.url}/v1/embeddings", timeout=10)
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
    huge = httpx.post(
        f"{server.url}/v1/embeddings",
        content=b"x" * (17 * 1024 * 1024),
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "body_too_large"


def test_health_and_metrics_endpoints(server) -> None:
    assert httpx.get(f"{server.url}/v2/health/live", timeout=10).json() == {"live": True}
    assert httpx.get(f"{server.url}/v2/health/ready", timeout=10).json() == {"ready": True}
    _post(server, {"input": "warm"})
    samples = _metric_samples(server)
    for name in (
        "optiserve_requests_total",
        "optiserve_request_duration_seconds_bucket",
        "optiserve_batch_size_bucket",
        "optiserve_queue_wait_seconds_bucket",
        "optiserve_inference_duration_seconds_bucket",
        "optiserve_batch_padding_ratio_bucket",
        "optiserve_model_info",
    ):
        assert name in samples, name
    served = [s.labels for s in samples["optiserve_model_info"] if s.value == 1]
    (info,) = [labels for labels in served if labels["model"] == MODEL]
    assert info["runtime"] == "onnxruntime" and info["chain"].startswith("export_onnx")
    # only the served package is described with 1 (packages replaced in place say 0; replaced replicas' go away)
    assert {labels["model"] for labels in served} == {MODEL}
    embeddings = [s for s in samples["optiserve_requests_total"] if s.labels["route"] == "/v1/embeddings"]
    assert "200" in {s.labels["code"] for s in embeddings}
    # answered requests carry the model they ran on (requests refused before naming a model carry model="")
    answered = {(s.labels["model"], s.labels["version"]) for s in embeddings if s.labels["code"] == "200"}
    assert (MODEL, info["version"]) in answered and all(model for model, _ in answered)
    buckets = [float(s.labels["le"]) for s in samples["optiserve_request_duration_seconds_bucket"]]
    assert min(buckets) < 0.001  # sub-millisecond resolution


def test_user_config_change_retunes_the_running_replica(server, minilm_packages) -> None:
    """Redeploying with only user_config changed calls reconfigure(): batches then respect the new size."""
    package = minilm_packages.package.root

    try:
        server.deploy(package, {"max_batch_size": 3})
        before = _batch_buckets(server)
        replies = post_concurrently(f"{server.url}/v1/embeddings", [{"input": t} for t in load_split("heldout")[:60]])
        assert [r.status_code for r in replies] == [200] * 60
        after = _batch_buckets(server)
        gained = {le: after[le] - before.get(le, 0.0) for le in after}
        assert gained["+Inf"] > 0 and gained["3.0"] == gained["+Inf"]  # no batch above 3 items
        assert gained["1.0"] < gained["+Inf"]  # and batching still happened
    finally:
        server.deploy(package)


def test_ingress_listens_on_loopback_only(server) -> None:
    """The HAProxy ingress (the default) and the replicas' direct-ingress listeners bind 127.0.0.1 only: Ray's
    HAProxy config would put the stats (8404) and metrics (9101) ports on every interface (serving/haproxy-local).
    Ray's own gRPC ports are out of scope here (docs/security.md)."""
    import psutil

    from serving.launcher import HAPROXY_PORTS

    haproxy = [p for p in psutil.process_iter(["name"]) if "haproxy" in (p.info["name"] or "")]
    assert haproxy, "the default ingress is HAProxy"
    listening = set()
    for proc in haproxy:
        try:  # a reload replaces HAProxy processes: one may exit while we look
            connections = proc.net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        listening |= {(c.laddr.ip, c.laddr.port) for c in connections if c.status == "LISTEN"}
    haproxy_ports = {int(os.environ[name]) for name in HAPROXY_PORTS}  # Ray's 8404 and 9101 where they were free
    assert {port for _, port in listening} >= {*haproxy_ports, server.port}
    assert {ip for ip, _ in listening} == {"127.0.0.1"}


def test_haproxy_wrapper_rebinds_all_interface_listeners(tmp_path) -> None:
    from serving.launcher import HAPROXY_WRAPPER

    config = tmp_path / "haproxy.cfg"
    config.write_text(
        "frontend prometheus\n    bind :9101\nlisten stats\n  bind *:8404\nfrontend http\n    bind 10.0.0.5:80\n"
    )
    run = subprocess.run(
        [str(HAPROXY_WRAPPER), "-db", "-f", str(config)],
        env={"PATH": "/usr/bin:/bin", "OPTISERVE_HAPROXY_BINARY": shutil.which("echo") or "/bin/echo"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert run.stdout.split() == ["-db", "-f", str(config)]  # the real binary gets the same arguments
    binds = [line.strip() for line in config.read_text().splitlines() if line.strip().startswith("bind")]
    assert binds == ["bind 127.0.0.1:9101", "bind 127.0.0.1:8404", "bind 10.0.0.5:80"]


def _items_computed(server) -> float:
    """Items the model computed so far (``optiserve_batch_size`` is observed once per batch with its size)."""
    return sum(
        s.value for s in _metric_samples(server).get("optiserve_batch_size_sum", []) if s.labels["model"] == MODEL
    )


def _counter(server, name: str) -> float:
    return sum(s.value for s in _metric_samples(server).get(f"{name}_total", []) if s.labels.get("model") == MODEL)


@pytest.fixture
def cached(server, minilm_packages) -> Iterator:
    """The session's server with the response cache switched on (this dynamic-int8 package has it off by
    default: batch-mates change its outputs), restored after."""
    try:
        server.deploy(minilm_packages.package.root, {"cache_mb": 8})
        yield server
    finally:
        server.deploy(minilm_packages.package.root)


def test_a_dynamic_int8_package_serves_without_a_cache_by_default(server) -> None:
    parameters = httpx.get(f"{server.url}/v2/models/{MODEL}", timeout=10).json()["parameters"]["optiserve"]
    assert parameters["cache"]["max_bytes"] == 0


def test_the_response_cache_answers_repeats_identically_and_follows_cache_control(cached, minilm_packages) -> None:
    server = cached
    text = "a sentence the response cache test sends again and again"
    hits, misses = _counter(server, "optiserve_cache_hits"), _counter(server, "optiserve_cache_misses")
    computed = _items_computed(server)

    def vectors(body: object, headers: dict[str, str] | None = None) -> np.ndarray:
        response = _post(server, body, headers=headers)
        assert response.status_code == 200, response.text
        return np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)

    first = vectors({"input": text})
    again = vectors({"input": [text, text, "another sentence"]})  # a hit, and a duplicate inside the request
    assert np.array_equal(again[0], first[0]) and np.array_equal(again[1], first[0])
    assert _counter(server, "optiserve_cache_hits") - hits == 2  # the repeat of the earlier text, twice
    assert _counter(server, "optiserve_cache_misses") - misses == 2  # the first request, and "another sentence"
    after_hits = _items_computed(server)
    assert after_hits - computed == 2  # two distinct texts ever computed

    fresh = vectors({"input": text}, {"Cache-Control": "no-cache"})  # computed afresh: agrees within tolerance
    direct = TextPipeline.from_package(load_package(minilm_packages.package.root), threads=1).run([text])[0]
    tolerance = httpx.get(f"{server.url}/v2/models/{MODEL}", timeout=10).json()["parameters"]["optiserve"]["cache"]
    assert tolerance["max_bytes"] == 8 * 2**20
    assert _cosines(fresh, first)[0] > 0.98  # a fresh answer in other company: dynamic int8's batch-mate effect
    assert _cosines(first, direct[:1])[0] > 0.999
    vectors({"input": "never stored"}, NO_STORE)
    vectors({"input": "never stored"}, NO_STORE)
    assert _items_computed(server) - after_hits == 3  # no-cache + 2 no-store
    assert _counter(server, "optiserve_cache_hits") - hits == 2
    entries = [s.value for s in _metric_samples(server)["optiserve_cache_entries"] if s.labels["model"] == MODEL]
    assert sum(entries) >= 2 and tolerance["entries"] >= 2


def test_truncate_per_request_overrides_the_server_policy(server) -> None:
    long_text = " ".join(["token"] * 400)  # past MiniLM's 256 tokens; the session's server truncates by default
    refused = _post(server, {"input": ["short", long_text], "truncate": False})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "input_too_long"
    assert "truncate: false" in refused.json()["error"]["message"]
    cut = _post(server, {"input": long_text, "truncate": True})
    assert cut.status_code == 200 and cut.json()["data"][0]["truncated"] is True
    assert _post(server, {"input": "x", "truncate": "yes"}).status_code == 422  # a boolean, not a string


def test_a_package_can_be_served_under_another_name(server, minilm_packages) -> None:
    package = minilm_packages.package.root
    try:
        server.deploy(package, served_names=["my-embedder"])
        listed = [m["id"] for m in httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"]]
        named = _post(server, {"input": "hello", "model": "my-embedder"})
        old_name = _post(server, {"input": "hello", "model": MODEL})
        metadata = httpx.get(f"{server.url}/v2/models/my-embedder", timeout=10)
    finally:
        server.deploy(package)
    assert listed == ["my-embedder"]
    assert named.status_code == 200 and named.json()["model"] == "my-embedder"
    assert old_name.status_code == 404
    assert metadata.status_code == 200 and metadata.json()["name"] == "my-embedder"
