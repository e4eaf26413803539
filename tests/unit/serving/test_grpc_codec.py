"""The gRPC codec maps the Open Inference Protocol's messages onto the HTTP codec's request, so both protocols
share every check after parsing; tritonclient.grpc reads what it answers."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.grpc import service_pb2

from serving import grpc_codec, kserve
from serving.errors import InvalidInferRequestError, TooManyInputsError
from serving.grpc_stubs import inference


def _request(**fields) -> inference.ModelInferRequest:
    return inference.ModelInferRequest(model_name="m", **fields)


def test_raw_and_typed_contents_parse_to_the_same_request() -> None:
    raw = _request(raw_input_contents=[kserve.encode_bytes_tensor(np.array(["a", "bé"], dtype=object))])
    raw.inputs.add(name="text", datatype="BYTES", shape=[2])
    typed = _request()
    typed.inputs.add(name="text", datatype="BYTES", shape=[2]).contents.bytes_contents.extend([b"a", "bé".encode()])
    for message in (raw, typed):
        parsed = grpc_codec.infer_request(message, max_elements=8)
        assert kserve.text_input(parsed, "text", 8) == ["a", "bé"]
    pixels = _request(raw_input_contents=[np.arange(4, dtype="<f4").tobytes()])
    pixels.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    assert kserve.tensor_input(grpc_codec.infer_request(pixels, 8), "x", (4,), 8)[0].tolist() == [0, 1, 2, 3]


def test_parameters_and_requested_outputs_are_carried() -> None:
    message = _request(id="r7")
    message.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"a")
    message.parameters["dimensions"].int64_param = 64
    message.parameters["truncate"].bool_param = False
    message.parameters["prompt_name"].string_param = "query"
    message.outputs.add(name="embedding")
    parsed = grpc_codec.infer_request(message, 8)
    assert parsed.parameters == {"dimensions": 64, "truncate": False, "prompt_name": "query"}
    assert (parsed.id, parsed.outputs) == ("r7", ["embedding"])


@pytest.mark.parametrize(
    ("build", "error", "fragment"),
    [
        (lambda m: None, InvalidInferRequestError, "no inputs"),
        (lambda m: m.inputs.add(name="t", datatype="BYTES", shape=[-1]), InvalidInferRequestError, "non-negative"),
        (lambda m: m.inputs.add(name="t", datatype="BYTES", shape=[9]), TooManyInputsError, "at most 8"),
        (lambda m: m.inputs.add(name="t", datatype="COMPLEX", shape=[1]), InvalidInferRequestError, "unknown datatype"),
        (
            lambda m: (m.inputs.add(name="t", datatype="BYTES", shape=[1]), m.raw_input_contents.extend([b"", b""])),
            InvalidInferRequestError,
            "2 entries for 1 inputs",
        ),
    ],
    ids=["no inputs", "negative shape", "too many", "unknown type", "raw count"],
)
def test_bad_messages_are_refused_naming_the_problem(build, error, fragment) -> None:
    message = _request()
    build(message)
    with pytest.raises(error, match=fragment):
        grpc_codec.infer_request(message, max_elements=8)


def test_bytes_stay_bytes_until_a_text_model_reads_them_as_utf8() -> None:
    """BYTES contents are parsed as bytes: a text model's input refuses what is not UTF-8, an image model's takes
    the files as they are."""
    message = _request()
    message.inputs.add(name="t", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"\xff\xd8 a JPEG")
    parsed = grpc_codec.infer_request(message, max_elements=8)
    assert parsed.inputs[0].data == [b"\xff\xd8 a JPEG"]
    with pytest.raises(InvalidInferRequestError, match="UTF-8"):
        kserve.text_input(parsed, "t", 8)
    assert kserve.image_input(
        kserve.InferRequest("r", [kserve.InferInput("image", "BYTES", [1], [b"\xff\xd8"])], None), "image", 8
    ) == [b"\xff\xd8"]


def test_the_response_is_what_tritonclient_grpc_reads() -> None:
    request = kserve.InferRequest("r1", [], ["label", "logits"])
    logits = np.array([[0.5, -1.0], [2.0, 0.25]], dtype=np.float32)
    outputs = [
        kserve.OutputTensor("logits", "FP32", logits),
        kserve.OutputTensor("label", "BYTES", np.array(["yes", "no"], dtype=object)),
    ]
    message = grpc_codec.infer_response("m", "3", request, outputs)
    result = triton_grpc.InferResult(service_pb2.ModelInferResponse.FromString(message.SerializeToString()))
    assert result.get_response().id == "r1" and result.get_response().model_version == "3"
    np.testing.assert_array_equal(result.as_numpy("logits"), logits)
    assert result.as_numpy("label").tolist() == [b"yes", b"no"]
    assert [o.name for o in message.outputs] == ["label", "logits"]
