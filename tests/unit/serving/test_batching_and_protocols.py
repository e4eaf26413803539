"""Pure pieces of the serving path, without a server: the adaptive batch wait, device/provider selection and the
KServe v2 binary tensor format."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from modelpkg.errors import OptiserveError
from modelpkg.runtimes.base import CPU_PROVIDER, assigned_gpus, choose_onnx_providers, choose_torch_device
from serving.batching import MIN_SAMPLES, AdaptiveWait
from serving.kserve import HEADER_LENGTH, OutputTensor, infer_response, parse_infer_request, text_input


def _fed(fixed_s: float, per_token_s: float, max_wait_s: float = 0.01) -> AdaptiveWait:
    wait = AdaptiveWait(max_wait_s)
    for tokens in np.linspace(50, 2000, 2 * MIN_SAMPLES):
        wait.finished(int(tokens), fixed_s + per_token_s * tokens)
    return wait


def test_adaptive_wait_uses_the_maximum_until_it_has_a_cost_model() -> None:
    wait = AdaptiveWait(0.004)
    assert wait.wait_s() == 0.004
    for _ in range(MIN_SAMPLES):
        wait.finished(100, 0.01)  # all batches the same size: no slope to fit
    assert wait.cost_model() is None and wait.wait_s() == 0.004


def test_adaptive_wait_fits_batch_cost_and_waits_only_while_it_pays() -> None:
    wait = _fed(fixed_s=0.003, per_token_s=2e-6)
    a, b = wait.cost_model()
    assert a == pytest.approx(2e-6, rel=1e-3) and b == pytest.approx(0.003, rel=1e-3)
    now = 1000.0
    wait.arrived(10, now)  # 5 items/s over the 2 s horizon: nothing expected within b = 3 ms
    assert wait.wait_s(now) == 0.0
    wait.arrived(2000, now)  # ~1000 items/s: 3 expected within b, so wait b (below the 10 ms cap)
    assert wait.wait_s(now) == pytest.approx(0.003, rel=1e-3)
    assert _fed(fixed_s=0.05, per_token_s=1e-6).wait_s() == 0.0  # no arrivals recorded at all
    capped = _fed(fixed_s=0.05, per_token_s=1e-6)
    capped.arrived(1000, now)
    assert capped.wait_s(now) == 0.01  # b = 50 ms, capped at the configured maximum


def test_provider_choice_prefers_gpu_providers_and_says_why_it_falls_back() -> None:
    cpu_only = choose_onnx_providers([], ["CPUExecutionProvider"])
    assert cpu_only.device == "cpu" and cpu_only.providers == (CPU_PROVIDER,)
    fallback = choose_onnx_providers(["0"], ["CPUExecutionProvider"])
    assert fallback.device == "cpu" and "onnxruntime-gpu" in fallback.reason
    gpu = choose_onnx_providers(["1"], ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert gpu.device == "cuda" and gpu.providers == ("CUDAExecutionProvider", CPU_PROVIDER)
    assert "TensorrtExecutionProvider not available" in gpu.reason
    full = choose_onnx_providers(["0"], ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert full.providers[0] == "TensorrtExecutionProvider"
    assert choose_torch_device(["0"], cuda_available=False).device == "cpu"
    assert choose_torch_device(["0"], cuda_available=True).device == "cuda"


def test_assigned_gpus_reads_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,2")
    assert assigned_gpus() == ["0", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert assigned_gpus() == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert assigned_gpus() == []


def _binary_request(texts: list[str], parameters: dict | None = None) -> tuple[bytes, str]:
    raw = b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "shape": [len(texts)],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": parameters or {},
        }
    )
    return header + raw, str(len(header))


def test_binary_bytes_tensor_round_trip() -> None:
    texts = ["plain", "ünïcödé ✓", "a much longer sentence with several words"]
    body, header_length = _binary_request(texts, {"binary_data_output": True})
    request = parse_infer_request(body, header_length, 10)
    assert text_input(request, "text", max_inputs=10) == texts
    vectors = np.arange(6, dtype=np.float32).reshape(3, 2)
    labels = np.array(["x", "yy", "zzz"], dtype=object)
    out, headers = infer_response(
        "m", "1", request, [OutputTensor("embedding", "FP32", vectors), OutputTensor("label", "BYTES", labels)]
    )
    size = int(headers[HEADER_LENGTH])
    meta = orjson.loads(out[:size])
    assert [o["parameters"]["binary_data_size"] for o in meta["outputs"]] == [24, 3 * 4 + 6]
    assert np.array_equal(np.frombuffer(out[size : size + 24], dtype="<f4").reshape(3, 2), vectors)


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda body, n: (body[:-3], n), "runs past the end"),
        (lambda body, n: (body + b"xx", n), "not claimed"),
        (lambda body, n: (body, "999999"), "not a length"),
        (lambda body, n: (body, "²"), "not a length"),  # a digit to str.isdigit, not to int()
        (lambda body, n: (body, "9" * 5000), "not a length"),  # past Python's int-parsing digit limit
        (lambda body, n: (b"[" + body[1:], n), "not valid JSON"),
    ],
)
def test_malformed_binary_requests_are_refused_with_a_reason(mutate, fragment) -> None:
    body, header_length = _binary_request(["one", "two"])
    with pytest.raises(OptiserveError, match=fragment) as error:
        parse_infer_request(*mutate(body, header_length), 10)
    assert error.value.status == 400


def test_too_many_texts_is_413() -> None:
    body, header_length = _binary_request(["t"] * 5)
    with pytest.raises(OptiserveError) as error:
        text_input(parse_infer_request(body, header_length, 10), "text", max_inputs=4)
    assert error.value.status == 413


def test_a_shape_past_the_element_limit_is_413_before_its_data_is_decoded() -> None:
    body, header_length = _binary_request([""] * 50_000)  # the loop-stall attack, small: many empty elements
    with pytest.raises(OptiserveError, match="50000 elements; at most 8") as error:
        parse_infer_request(body, header_length, 8)
    assert (error.value.status, error.value.code) == (413, "too_many_inputs")


def test_binary_bytes_data_past_its_shape_is_refused() -> None:
    body, header_length = _binary_request(["a", "b", "c"])
    header = orjson.loads(body[: int(header_length)])
    header["inputs"][0]["shape"] = [1]
    new_header = orjson.dumps(header)
    with pytest.raises(OptiserveError, match="more than the 1 elements") as error:
        parse_infer_request(new_header + body[int(header_length) :], str(len(new_header)), 10)
    assert error.value.status == 400


@pytest.mark.parametrize(
    ("shape", "fragment"),
    [
        ([274177, 67280421310721], "holds 18446744073709551617 elements"),  # overflowed int64 to 1 with np.prod
        ([True], "list of non-negative integers"),
        ([2.0], "list of non-negative integers"),
    ],
)
def test_shapes_are_integers_and_their_size_does_not_overflow(shape, fragment) -> None:
    body = orjson.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": shape, "data": ["x"]}]})
    with pytest.raises(OptiserveError, match=fragment):
        parse_infer_request(body, None, 10)


def test_nested_json_is_refused_without_parsing_it() -> None:
    body = b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x"]}], "id": ['
    body += b",".join([b"[]"] * 100_000) + b"]}"
    with pytest.raises(OptiserveError, match="arrays and objects") as error:
        parse_infer_request(body, None, 10)
    assert error.value.status == 400
