"""One application serving an embedding package and a classifier package side by side, on GPU-requesting
replicas placed by (logical) GPU resources, driven by the unmodified ``openai`` and ``tritonclient.http``
clients and plain HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from corpus import load_split
from modelpkg.package import load_package
from modelpkg.pipeline import TextPipeline
from serving.api import softmax
from serving.grpc_stubs import health, inference
from tests.conftest import CLASSIFIER_LABELS
from tests.integration.test_server import MODEL, _cosines, _metric_samples
from tests.support import grpc as grpc_client
from tests.support.direct import direct_pipeline
from tests.support.load import post_concurrently

pytestmark = pytest.mark.serve
TEXTS = load_split("heldout")[40:64]
CLASSIFIER = "tiny-classifier"
CALL_TOKEN_BUDGET = 512  # max_batch_tokens given to MiniLM in this module


@pytest.fixture(scope="module")
def both(server, minilm_packages, classifier_package) -> Iterator:
    """MiniLM and the tiny classifier in one deployment, each replica asking for half a (logical) GPU; MiniLM's
    model calls limited to CALL_TOKEN_BUDGET padded tokens. The session's default deployment is restored after."""
    # A queue bound far above the bursts below: this module checks batching and routing, not admission.
    overrides = {"models": {MODEL: {"max_batch_tokens": CALL_TOKEN_BUDGET, "max_call_items": 32, "max_queued_s": 60}}}
    server.deploy([minilm_packages.package.root, classifier_package.package.root], overrides, num_gpus=0.5)
    try:
        yield server
    finally:
        server.deploy(minilm_packages.package.root)


def _direct(package_root) -> TextPipeline:
    return TextPipeline.from_package(load_package(package_root), threads=1)


def test_models_are_listed_and_routed_by_name(both) -> None:
    listed = httpx.get(f"{both.url}/v1/models", timeout=10).json()["data"]
    assert {(m["id"], m["task"]) for m in listed} == {(MODEL, "embedding"), (CLASSIFIER, "classification")}
    # the model field may be left out when one model fits the route
    assert httpx.post(f"{both.url}/v1/embeddings", json={"input": "a"}, timeout=30).status_code == 200
    wrong = httpx.post(f"{both.url}/v1/embeddings", json={"input": "a", "model": CLASSIFIER}, timeout=30)
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "wrong_task"
    missing = httpx.post(f"{both.url}/v1/classify", json={"input": "a", "model": "nope"}, timeout=30)
    assert missing.status_code == 404 and MODEL in missing.json()["error"]["message"]


def test_classify_returns_labels_and_probabilities_of_the_package(both, classifier_package) -> None:
    response = httpx.post(f"{both.url}/v1/classify", json={"input": TEXTS, "model": CLASSIFIER}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = softmax(_direct(classifier_package.package.root).run(TEXTS)[0])
    assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
    for row, item in zip(expected, body["data"], strict=True):
        assert set(item["scores"]) == set(CLASSIFIER_LABELS)
        assert item["label"] == CLASSIFIER_LABELS[int(row.argmax())]
        assert np.allclose([item["scores"][label] for label in CLASSIFIER_LABELS], row, atol=1e-4)
    assert body["usage"]["prompt_tokens"] > len(TEXTS)


def test_openai_client_embeds_with_the_model_named(both, minilm_packages) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{both.url}/v1", api_key="unused", max_retries=0)
    result = client.embeddings.create(model=MODEL, input=TEXTS[:5])
    served = np.array([d.embedding for d in result.data], dtype=np.float32)
    direct = direct_pipeline(minilm_packages.package.root, (both.url, MODEL))  # calls cut as the replica cuts them
    assert _cosines(served, direct.run(TEXTS[:5])[0]).min() >= 0.999


@pytest.mark.parametrize("binary", [True, False], ids=["binary-tensors", "json-tensors"])
def test_tritonclient_infers_embeddings_and_labels(both, minilm_packages, classifier_package, binary) -> None:
    client = triton.InferenceServerClient(url=both.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(CLASSIFIER)
    metadata = client.get_model_metadata(MODEL)
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["outputs"][0]["shape"] == [-1, 384]

    def infer(model: str, outputs: list[str]) -> triton.InferResult:
        text = triton.InferInput("text", [len(TEXTS)], "BYTES")
        text.set_data_from_numpy(np.array(TEXTS, dtype=object), binary_data=binary)
        wanted = [triton.InferRequestedOutput(name, binary_data=binary) for name in outputs]
        return client.infer(model, [text], outputs=wanted, request_id="r1")

    embedded = infer(MODEL, ["embedding"]).as_numpy("embedding")
    assert embedded.shape == (len(TEXTS), 384) and embedded.dtype == np.float32
    # dynamic int8: activation scales depend on which rows share a model call, and this module's token budget
    # groups rows differently from a direct call, so compare within the package's fidelity, not bit for bit
    assert _cosines(embedded, _direct(minilm_packages.package.root).run(TEXTS)[0]).min() >= 0.98

    classified = infer(CLASSIFIER, ["label", "logits"])
    logits = _direct(classifier_package.package.root).run(TEXTS)[0]
    assert classified.as_numpy("logits").shape == (len(TEXTS), len(CLASSIFIER_LABELS))
    labels = [v.decode() if isinstance(v, bytes) else v for v in classified.as_numpy("label")]
    assert labels == [CLASSIFIER_LABELS[i] for i in logits.argmax(axis=1)]
    assert classified.get_response()["id"] == "r1"

    with pytest.raises(InferenceServerException, match="not served here"):
        client.get_model_metadata("nope")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"inputs": []}, "non-empty 'inputs'"),
        ({"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, "must be BYTES"),
        ({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a"]}]}, "holds 2 elements"),
        ({"inputs": [{"name": "txt", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}, "named 'text'"),
        ({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [" "]}]}, "is empty"),
        (
            {
                "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
                "outputs": [{"name": "x"}],
            },
            "unknown output",
        ),
    ],
)
def test_kserve_bad_requests_get_400_with_a_message(both, body, fragment) -> None:
    response = httpx.post(f"{both.url}/v2/models/{MODEL}/infer", json=body, timeout=30)
    assert response.status_code == 400
    assert fragment in response.json()["error"]  # KServe v2 errors are {"error": "<message>"}


def test_replicas_are_placed_on_gpu_resources_and_fall_back_to_cpu_with_a_reason(both) -> None:
    """On this machine the GPU is logical: the replica is given GPU 0 by Ray, finds no GPU provider in
    onnxruntime and runs on CPU, saying why."""
    details = httpx.get(f"{both.url}/v2/models/{MODEL}", timeout=10).json()["parameters"]["optiserve"]
    assert details["gpus"] == ["0"]
    assert details["device"] == "cpu" and "no GPU provider" in details["device_reason"]
    import ray

    assert ray.available_resources().get("GPU", 0.0) <= 0.5  # the replica holds half of the one GPU


def test_metrics_show_batches_per_model_and_the_token_budget_held(both) -> None:
    texts = load_split("heldout")[:200]
    bodies = [{"input": texts[i : i + 4], "model": MODEL} for i in range(0, len(texts), 4)]
    responses = post_concurrently(f"{both.url}/v1/embeddings", bodies)
    assert {r.status_code for r in responses} == {200}
    httpx.post(f"{both.url}/v1/classify", json={"input": texts[:8]}, timeout=30)
    samples = _metric_samples(both)

    def buckets(name: str, model: str) -> dict[float, float]:
        summed: dict[float, float] = {}  # over the packages that served the model (upgrades in place)
        for sample in samples[name]:
            if sample.labels["model"] == model:
                summed[float(sample.labels["le"])] = summed.get(float(sample.labels["le"]), 0.0) + sample.value
        return summed

    batch_sizes = buckets("optiserve_batch_size_bucket", MODEL)
    assert batch_sizes[float("inf")] > batch_sizes[1.0], "some dynamic batches held more than one item"
    calls = buckets("optiserve_model_call_padded_tokens_bucket", MODEL)
    assert calls[float("inf")] > 0 and calls[float(CALL_TOKEN_BUDGET)] == calls[float("inf")]
    assert buckets("optiserve_batch_size_bucket", CLASSIFIER)[float("inf")] >= 1
    info = {s.labels["model"]: s.labels for s in samples["optiserve_model_info"] if s.value == 1}
    assert info[CLASSIFIER]["task"] == "classification" and info[MODEL]["task"] == "embedding"


def test_classify_and_kserve_locust_files_run_against_the_classifier(both, tmp_path) -> None:
    from loadtests.runner import LoadTestConfig, run_loadtest

    for api in ("classify", "kserve"):
        summary = run_loadtest(
            LoadTestConfig(
                host=both.url, out_dir=tmp_path, users=2, duration_s=3, max_inputs=4, api=api, model=CLASSIFIER,
                plots=False, label=api,
            )
        )  # fmt: skip
        assert summary.failures == 0 and summary.client["requests"] > 3, api


def test_tritonclient_grpc_infers_embeddings_and_labels(both, minilm_packages, classifier_package) -> None:
    """The Open Inference Protocol over gRPC, raw tensor contents both ways (what tritonclient.grpc sends)."""
    client = grpc_client.client(both)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(CLASSIFIER)
    assert client.get_server_metadata().name == "optiserve"
    metadata = client.get_model_metadata(MODEL)
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("text", "BYTES", [-1])]
    assert list(metadata.outputs[0].shape) == [-1, 384]

    embedded = client.infer(MODEL, [grpc_client.text_input(TEXTS)], request_id="g1")
    assert embedded.get_response().id == "g1" and embedded.get_response().model_name == MODEL
    vectors = embedded.as_numpy("embedding")
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    # within the package's fidelity, as over HTTP (dynamic int8 here: rows batch differently from a direct call)
    assert _cosines(vectors, _direct(minilm_packages.package.root).run(TEXTS)[0]).min() >= 0.98

    wanted = [triton_grpc.InferRequestedOutput("label"), triton_grpc.InferRequestedOutput("logits")]
    classified = client.infer(CLASSIFIER, [grpc_client.text_input(TEXTS)], outputs=wanted)
    assert [o.name for o in classified.get_response().outputs] == ["label", "logits"]
    logits = _direct(classifier_package.package.root).run(TEXTS)[0]
    labels = [v.decode() for v in classified.as_numpy("label")]
    assert labels == [CLASSIFIER_LABELS[i] for i in logits.argmax(axis=1)]


def _grpc_refusal(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as refused:
        call()
    assert "Traceback" not in refused.value.message()
    return refused.value


def test_grpc_errors_are_status_codes_with_the_http_messages(both) -> None:
    client = grpc_client.client(both)
    missing = _grpc_refusal(lambda: client.get_model_metadata("nope"))
    assert missing.status() == "StatusCode.NOT_FOUND" and "not served here" in missing.message()
    numbers = triton_grpc.InferInput("text", [1], "FP32")
    numbers.set_data_from_numpy(np.ones(1, dtype=np.float32))
    wrong_type = _grpc_refusal(lambda: client.infer(MODEL, [numbers]))
    assert wrong_type.status() == "StatusCode.INVALID_ARGUMENT" and "must be BYTES" in wrong_type.message()
    unknown = [triton_grpc.InferRequestedOutput("x")]
    no_output = _grpc_refusal(lambda: client.infer(MODEL, [grpc_client.text_input(["a"])], outputs=unknown))
    assert no_output.status() == "StatusCode.INVALID_ARGUMENT" and "unknown output" in no_output.message()
    # a shape past the limit is refused before any data is read (a client library would not send this one)
    huge = inference.ModelInferRequest(model_name=MODEL, raw_input_contents=[b""])
    huge.inputs.add(name="text", datatype="BYTES", shape=[10**9])
    with pytest.raises(grpc.RpcError) as too_many:
        grpc_client.raw_infer(both, huge)
    assert too_many.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "holds 1000000000 elements" in too_many.value.details()


def test_grpc_health_and_metrics(both) -> None:
    assert grpc_client.health_check(both).status == health.HealthCheckResponse.SERVING
    assert grpc_client.health_check(both, "inference.GRPCInferenceService").status == health.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as unknown:
        grpc_client.health_check(both, "other.Service")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    grpc_client.client(both).infer(MODEL, [grpc_client.text_input(["counted"])])
    request = inference.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"typed contents")
    response, call = grpc_client.raw_infer(both, request, [("x-request-id", "grpc-id-1")])
    assert len(response.raw_output_contents[0]) == 4 * 384  # typed contents in, raw contents out
    assert ("x-request-id", "grpc-id-1") in call.trailing_metadata()  # the id comes back, as over HTTP
    counted = {
        (s.labels["route"], s.labels["code"], s.labels["model"]): s.value
        for s in _metric_samples(both)["optiserve_requests_total"]
    }
    assert counted.get(("/inference.GRPCInferenceService/ModelInfer", "200", MODEL), 0) >= 1
    assert counted.get(("/inference.GRPCInferenceService/ModelMetadata", "404", ""), 0) >= 1
