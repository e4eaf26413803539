"""The generality example (c): a CNN teacher trained on scikit-learn's digits, distilled into a smaller student,
quantized, packaged (ONNX, no tokenizer) and served: KServe v2 with FP32 tensors, through the unmodified
``tritonclient.http`` (binary and JSON) and plain HTTP."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton

from modelpkg.package import load_package
from modelpkg.pipeline import TensorPipeline
from optimizers.chain import optimize
from optimizers.datasets import digits
from tests.integration.test_server import MODEL
from tests.support import grpc as grpc_client
from tests.support.paths import ROOT

EXAMPLE = ROOT / "examples" / "digits"
NAME = "digits-teacher"


def _train_teacher():
    spec = importlib.util.spec_from_file_location("digits_train_teacher", EXAMPLE / "train_teacher.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.train_teacher


@pytest.fixture(scope="module")
def digits_chain(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("digits")
    teacher = root / NAME
    accuracy = _train_teacher()(teacher, epochs=20)
    assert accuracy > 0.95  # the teacher learned the task
    return optimize(teacher, root / "package", recipe=EXAMPLE / "recipe.yaml", cache_dir=root / "cache")


@pytest.mark.slow  # whole chains (seconds each): out of the fast loop, in make test
def test_teacher_is_distilled_quantized_and_packaged_without_code(digits_chain) -> None:
    by_name = {c.name: c for c in digits_chain.candidates}
    assert list(by_name) == ["torch-module", "onnx-fp32", "int8-static", "student", "student-int8"]
    student = by_name["student-int8"]
    assert [r.name for r in student.chain] == ["distill", "export_onnx", "quantize_dynamic"]
    assert student.size_bytes < by_name["onnx-fp32"].size_bytes / 4
    for candidate in by_name.values():  # accuracy against the true labels is measured for every candidate
        assert candidate.fidelity.labelled_accuracy is not None and candidate.fidelity.top1_agreement is not None
    selected = digits_chain.selected
    assert selected.name != "torch-module" and selected.fidelity.top1_agreement >= 0.97
    assert selected.fidelity.labelled_accuracy >= 0.95
    manifest = digits_chain.package.manifest
    assert manifest.tokenizer is None and manifest.runtime == "onnxruntime"
    assert manifest.inputs[0].name == "pixels" and manifest.inputs[0].shape == ["batch", 1, 8, 8]
    assert manifest.labels == [str(d) for d in range(10)]
    assert not any(f.path.endswith(".py") for f in manifest.files)  # the package never carries model code
    report = (digits_chain.package.root / "report.md").read_text()
    assert "labelled acc" in report and "student-int8" in report


@pytest.fixture(scope="module")
def served(server, minilm_packages, digits_chain) -> Iterator:
    server.deploy([minilm_packages.package.root, digits_chain.package.root])
    try:
        yield server
    finally:
        server.deploy(minilm_packages.package.root)


@pytest.mark.serve
@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_classifies_digit_images(served, digits_chain, binary: bool) -> None:
    images = np.stack(digits().heldout[:16])
    expected = TensorPipeline.from_package(load_package(digits_chain.package.root), threads=1).run(list(images))[0]
    client = triton.InferenceServerClient(served.url.removeprefix("http://"))
    tensor = triton.InferInput("pixels", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=binary)
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("logits", "label")]
    result = client.infer(NAME, [tensor], outputs=outputs)
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-4, atol=1e-4)
    labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")]
    assert labels == [str(i) for i in expected.argmax(1)]
    metadata = client.get_model_metadata(NAME)
    assert metadata["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]


@pytest.mark.serve
def test_tritonclient_grpc_classifies_digit_images_from_raw_contents(served, digits_chain) -> None:
    images = np.stack(digits().heldout[:16])
    expected = TensorPipeline.from_package(load_package(digits_chain.package.root), threads=1).run(list(images))[0]
    tensor = triton_grpc.InferInput("pixels", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    result = grpc_client.client(served).infer(NAME, [tensor])
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-4, atol=1e-4)
    assert [x.decode() for x in result.as_numpy("label")] == [str(i) for i in expected.argmax(1)]


@pytest.mark.serve
def test_bad_tensor_requests_get_clear_errors(served) -> None:
    url = f"{served.url}/v2/models/{NAME}/infer"

    def infer(inputs: list[dict]) -> httpx.Response:
        return httpx.post(url, json={"inputs": inputs}, timeout=30)

    wrong_shape = infer([{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}])
    assert wrong_shape.status_code == 400 and "does not match [n, 1, 8, 8]" in wrong_shape.json()["error"]
    short = infer([{"name": "pixels", "datatype": "FP32", "shape": [2, 1, 8, 8], "data": [0.0] * 64}])
    assert short.status_code == 400 and "128 elements" in short.json()["error"]
    text = infer([{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["seven"]}])
    assert text.status_code == 400 and "'pixels' (FP32)" in text.json()["error"]
    nan = infer([{"name": "pixels", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": ["NaN"] + [0.0] * 63}])
    assert nan.status_code == 400
    classify = httpx.post(f"{served.url}/v1/classify", json={"input": "seven", "model": NAME}, timeout=30)
    assert classify.status_code == 400 and classify.json()["error"]["code"] == "wrong_input"
    # the text models beside it are unaffected
    ok = httpx.post(f"{served.url}/v1/embeddings", json={"input": "a", "model": MODEL}, timeout=30)
    assert ok.status_code == 200
