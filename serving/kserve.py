"""KServe v2 / Open Inference Protocol: parse ``POST /v2/models/{m}/infer`` bodies and build responses, in JSON
or with Triton's binary tensor extension (what ``tritonclient.http`` sends and asks for by default).

A binary request is a JSON header of ``Inference-Header-Content-Length`` bytes followed by the raw tensors, in
input order, each ``parameters.binary_data_size`` bytes long; a BYTES tensor's raw form is, per element, a
4-byte little-endian length and then the bytes.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from serving.errors import InvalidInferRequestError, TooManyInputsError
from serving.jsonbody import MAX_JSON_CONTAINERS, json_containers, shorten

HEADER_LENGTH = "Inference-Header-Content-Length"
NUMPY_DTYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


@dataclass(frozen=True)
class InferInput:
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | np.ndarray


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: list[InferInput]
    outputs: list[str] | None  # requested output names; None = all
    binary_outputs: set[str] = field(default_factory=set)  # outputs to send as binary data
    parameters: dict[str, Any] = field(default_factory=dict)  # the request's own parameters


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    array: np.ndarray  # FP32 numbers, or an object array of str for BYTES


def _decode_bytes_tensor(raw: bytes, expected: int) -> list[bytes]:
    """The elements of a binary BYTES tensor; stops with an error past ``expected`` of them (what its shape
    holds), so a body of millions of empty elements costs nothing."""
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if len(items) == expected:
            raise InvalidInferRequestError(
                f"BYTES tensor data holds more than the {expected} elements its shape declares"
            )
        if offset + 4 > len(raw):
            raise InvalidInferRequestError("BYTES tensor data is truncated (an element length is cut off)")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInferRequestError("BYTES tensor data is truncated (an element is shorter than its length)")
        items.append(raw[offset : offset + length])
        offset += length
    return items


def encode_bytes_tensor(items: np.ndarray) -> bytes:
    parts = []
    for item in items.reshape(-1):
        encoded = str(item).encode("utf-8")
        parts.append(struct.pack("<I", len(encoded)) + encoded)
    return b"".join(parts)


def parse_infer_request(body: bytes, header_length: str | None, max_elements: int) -> InferRequest:
    """Parse an infer request body; raises :class:`~serving.errors.InvalidInferRequestError` (400) naming the
    problem, or a 413 when a tensor's shape holds more than ``max_elements`` elements (checked before its data is
    decoded)."""
    if header_length is not None:
        length = header_length.strip()
        if not (length.isascii() and length.isdigit() and len(length) <= 18 and int(length) <= len(body)):
            raise InvalidInferRequestError(
                f"{HEADER_LENGTH} {shorten(header_length)!r} is not a length within the body"
            )
        header, binary = body[: int(length)], body[int(length) :]
    else:
        header, binary = body, b""
    if (containers := json_containers(header, MAX_JSON_CONTAINERS + max_elements)) > MAX_JSON_CONTAINERS + max_elements:
        raise InvalidInferRequestError(
            f"the request's JSON holds {containers} arrays and objects; its tensors allow far fewer"
        )
    try:
        request = orjson.loads(header)
    except orjson.JSONDecodeError:
        raise InvalidInferRequestError("request body is not valid JSON") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise InvalidInferRequestError("request must be a JSON object with a non-empty 'inputs' list")
    parameters = _parameters(request, "request")
    inputs, offset = [], 0
    for index, tensor in enumerate(request["inputs"]):
        parsed, offset = _parse_input(index, tensor, binary, offset, max_elements)
        inputs.append(parsed)
    if offset != len(binary):
        raise InvalidInferRequestError(f"{len(binary) - offset} bytes of binary data are not claimed by any input")
    outputs, binary_outputs = _requested_outputs(request.get("outputs"), bool(parameters.get("binary_data_output")))
    request_id = request.get("id")
    request_id = str(request_id) if request_id is not None else None
    return InferRequest(request_id, inputs, outputs, binary_outputs, parameters)


def _parameters(entry: dict, where: str) -> dict:
    parameters = entry.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInferRequestError(f"{where}: 'parameters' must be an object")
    return parameters


def _parse_input(index: int, tensor: object, binary: bytes, offset: int, max_elements: int) -> tuple[InferInput, int]:
    """One entry of ``inputs``; binary data is taken from ``binary`` at ``offset``. Returns the new offset."""
    if not isinstance(tensor, dict):
        raise InvalidInferRequestError(f"inputs[{index}] must be an object")
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise InvalidInferRequestError(f"inputs[{index}] needs a 'name' and a 'datatype'")
    label = shorten(name)
    shape, elements = checked_shape(label, shape, max_elements)
    size = _parameters(tensor, f"input {label!r}").get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0 or offset + size > len(binary):
            raise InvalidInferRequestError(
                f"input {label!r}: binary_data_size {shorten(str(size))} runs past the end of the body"
            )
        data = decode_binary(label, datatype, binary[offset : offset + size], elements)
        return InferInput(name, datatype, shape, data), offset + size
    if "data" not in tensor:
        raise InvalidInferRequestError(f"input {label!r} has neither 'data' nor parameters.binary_data_size")
    return InferInput(name, datatype, shape, tensor["data"]), offset


def checked_shape(label: str, shape: object, max_elements: int) -> tuple[list[int], int]:
    """A tensor's shape and how many elements it holds: a 400 unless it is a list of non-negative integers, a
    413 past ``max_elements`` (checked before any data is decoded)."""
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidInferRequestError(f"input {label!r}: 'shape' must be a list of non-negative integers")
    elements = math.prod(shape)  # Python integers: no overflow
    if elements > max_elements:
        raise TooManyInputsError(
            f"input {label!r}: shape {shorten(str(shape))} holds {elements} elements; at most {max_elements}"
        )
    return shape, elements


def decode_binary(name: str, datatype: str, raw: bytes, elements: int) -> list[Any] | np.ndarray:
    """A tensor's elements from their raw form (the binary extension's, and gRPC's ``raw_input_contents``)."""
    if datatype == "BYTES":
        return _decode_bytes_tensor(raw, elements)  # text models decode UTF-8 (_texts), image models take the bytes
    if datatype not in NUMPY_DTYPES:
        raise InvalidInferRequestError(f"input {name!r}: unknown datatype {shorten(datatype)!r}")
    dtype = np.dtype(NUMPY_DTYPES[datatype]).newbyteorder("<")
    if len(raw) % dtype.itemsize:
        raise InvalidInferRequestError(f"input {name!r}: {len(raw)} bytes is not a whole number of {datatype} elements")
    return np.frombuffer(raw, dtype=dtype)


def _requested_outputs(raw: object, binary_default: bool) -> tuple[list[str] | None, set[str]]:
    if raw is None:
        return None, {"*"} if binary_default else set()
    if not isinstance(raw, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in raw):
        raise InvalidInferRequestError("'outputs' must be a list of objects with a 'name'")
    names = [o["name"] for o in raw]
    binary = {o["name"] for o in raw if _parameters(o, f"output {o['name']!r}").get("binary_data", binary_default)}
    return names, binary


def text_input(request: InferRequest, expected_name: str, max_inputs: int) -> list[str]:
    """The texts of a text model's single BYTES input (any shape: it is flattened)."""
    return text_inputs(request, (expected_name,), max_inputs)[expected_name]


def text_inputs(request: InferRequest, expected: tuple[str, ...], max_inputs: int) -> dict[str, list[str]]:
    """The texts of each of a text model's BYTES inputs, by name (any shape: each is flattened); the request must
    carry exactly the inputs ``expected`` names."""
    names = [i.name for i in request.inputs]
    if sorted(names) != sorted(expected):
        wanted = " and ".join(repr(name) for name in expected)
        inputs = "one input named" if len(expected) == 1 else "the inputs"
        raise InvalidInferRequestError(
            f"this model takes {inputs} {wanted} (BYTES); got {[shorten(n) for n in names[:8]]}"
        )
    return {tensor.name: _texts(tensor, max_inputs) for tensor in request.inputs}


def _texts(tensor: InferInput, max_inputs: int) -> list[str]:
    expected_name = tensor.name
    if tensor.datatype != "BYTES":
        raise InvalidInferRequestError(
            f"input {expected_name!r} must be BYTES (UTF-8 text), got {shorten(tensor.datatype)}"
        )
    data = tensor.data
    if not isinstance(data, list) or not all(isinstance(item, str | bytes) for item in data):
        raise InvalidInferRequestError(f"input {expected_name!r}: data must be a list of strings")
    try:
        data = [item.decode("utf-8") if isinstance(item, bytes) else item for item in data]
    except UnicodeDecodeError:
        raise InvalidInferRequestError(f"input {expected_name!r}: BYTES elements must be UTF-8 text") from None
    _check_count(tensor, len(data), max_inputs)
    return data


def _check_count(tensor: InferInput, elements: int, max_inputs: int) -> None:
    """A 400 unless ``elements`` (the data's) is what the tensor's shape holds and not zero; a 413 past
    ``max_inputs``."""
    count = math.prod(tensor.shape) if tensor.shape else 0
    if elements != count:
        raise InvalidInferRequestError(
            f"input {tensor.name!r}: shape {shorten(str(tensor.shape))} holds {count} elements, data has {elements}"
        )
    if not elements:
        raise InvalidInferRequestError(f"input {tensor.name!r} is empty")
    if elements > max_inputs:
        raise TooManyInputsError(f"at most {max_inputs} inputs per request, got {elements}")


def image_input(request: InferRequest, expected_name: str, max_inputs: int) -> list[bytes]:
    """The encoded image files of an image model's single BYTES input (shape ``[n]`` or ``[n, 1]``): raw bytes
    from the binary extension or gRPC, base64 text (or a ``data:`` URL) in JSON."""
    from modelpkg.images import from_text

    if len(request.inputs) != 1 or request.inputs[0].name != expected_name:
        names = [shorten(i.name) for i in request.inputs[:8]]
        raise InvalidInferRequestError(
            f"this model takes one input named {expected_name!r} (BYTES: encoded image files); got {names}"
        )
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES":
        raise InvalidInferRequestError(
            f"input {expected_name!r} must be BYTES (encoded JPEG, PNG or WebP files), got {shorten(tensor.datatype)}"
        )
    if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
        raise InvalidInferRequestError(f"input {expected_name!r}: shape must be [n] or [n, 1], got {tensor.shape}")
    data = tensor.data
    if not isinstance(data, list) or not all(isinstance(item, str | bytes) for item in data):
        raise InvalidInferRequestError(
            f"input {expected_name!r}: data must be a list of base64 strings (or binary data)"
        )
    _check_count(tensor, len(data), max_inputs)
    return [item if isinstance(item, bytes) else from_text(item, f"image {i}") for i, item in enumerate(data)]


def tensor_input(
    request: InferRequest, expected_name: str, item_shape: tuple[int, ...], max_inputs: int
) -> list[np.ndarray]:
    """The items of a tensor model's single input, shaped ``[n, *item_shape]``: one float32 array per item."""
    if len(request.inputs) != 1 or request.inputs[0].name != expected_name:
        names = [shorten(i.name) for i in request.inputs[:8]]
        raise InvalidInferRequestError(f"this model takes one input named {expected_name!r} (FP32); got {names}")
    tensor = request.inputs[0]
    expected = f"[n, {', '.join(map(str, item_shape))}]"
    if tensor.datatype not in NUMPY_DTYPES or tensor.datatype == "BOOL":
        raise InvalidInferRequestError(
            f"input {expected_name!r} must be numeric (FP32), got {shorten(tensor.datatype)}"
        )
    if len(tensor.shape) != 1 + len(item_shape) or tuple(tensor.shape[1:]) != item_shape:
        raise InvalidInferRequestError(
            f"input {expected_name!r}: shape {shorten(str(tensor.shape))} does not match {expected}"
        )
    try:
        array = np.asarray(tensor.data, dtype=np.float32)
    except (TypeError, ValueError):
        raise InvalidInferRequestError(f"input {expected_name!r}: data must be numbers") from None
    count = math.prod(tensor.shape)
    if array.size != count:
        raise InvalidInferRequestError(
            f"input {expected_name!r}: shape {shorten(str(tensor.shape))} holds {count} elements, data has {array.size}"
        )
    if not np.isfinite(array).all():
        raise InvalidInferRequestError(f"input {expected_name!r}: data must be finite numbers")
    if tensor.shape[0] == 0:
        raise InvalidInferRequestError(f"input {expected_name!r} is empty")
    if tensor.shape[0] > max_inputs:
        raise TooManyInputsError(f"at most {max_inputs} inputs per request, got {tensor.shape[0]}")
    return list(array.reshape(tensor.shape))


def select_outputs(request: InferRequest, outputs: list[OutputTensor]) -> list[OutputTensor]:
    """The outputs the request asked for, in its order (all when it named none); a 400 for an unknown name."""
    if request.outputs is None:
        return outputs
    by_name = {o.name: o for o in outputs}
    if unknown := [name for name in request.outputs if name not in by_name]:
        shown = [shorten(name) for name in unknown[:8]]
        raise InvalidInferRequestError(f"unknown output(s) {shown}; this model has {sorted(by_name)}")
    return [by_name[name] for name in request.outputs]


def raw_tensor(output: OutputTensor) -> bytes:
    """An output's raw form: FP32 little-endian, or length-prefixed UTF-8 elements for BYTES."""
    return encode_bytes_tensor(output.array) if output.datatype == "BYTES" else output.array.astype("<f4").tobytes()


def infer_response(
    model: str, version: str, request: InferRequest, outputs: list[OutputTensor]
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of the response: JSON, or JSON header + binary tensors when any output is binary."""
    entries, blobs = [], []
    for out in select_outputs(request, outputs):
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": list(out.array.shape)}
        if "*" in request.binary_outputs or out.name in request.binary_outputs:
            blob = raw_tensor(out)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = out.array.reshape(-1).tolist()
        entries.append(entry)
    body: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": entries}
    if request.id is not None:
        body["id"] = request.id
    header = orjson.dumps(body)
    if not blobs:
        return header, {"content-type": "application/json"}
    return header + b"".join(blobs), {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }
