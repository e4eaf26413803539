"""The Open Inference Protocol's gRPC messages, mapped onto the HTTP codec's (:mod:`serving.kserve`): a
``ModelInferRequest`` becomes the same :class:`~serving.kserve.InferRequest` a JSON or binary body does (so both
protocols share every check after parsing), and output tensors become a ``ModelInferResponse`` with raw contents,
as Triton answers and ``tritonclient.grpc`` reads them."""

from __future__ import annotations

from typing import Any

from serving import kserve
from serving.errors import InvalidInferRequestError
from serving.grpc_stubs import inference
from serving.jsonbody import shorten

# The field of InferTensorContents that holds each datatype's elements.
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parameters(mapping: Any) -> dict[str, Any]:
    """A message's ``map<string, InferParameter>`` as plain values (a parameter with no value set is None)."""
    values = {}
    for name, parameter in mapping.items():
        which = parameter.WhichOneof("parameter_choice")
        values[name] = getattr(parameter, which) if which else None
    return values


def infer_request(message: Any, max_elements: int) -> kserve.InferRequest:
    """The request a ``ModelInferRequest`` carries; a 400 naming what is wrong, a 413 for a tensor's shape past
    ``max_elements`` elements (before its data is decoded)."""
    if not message.inputs:
        raise InvalidInferRequestError("the request has no inputs")
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise InvalidInferRequestError(
            f"raw_input_contents holds {len(raw)} entries for {len(message.inputs)} inputs; send one per input"
        )
    inputs = [_input(tensor, raw[i] if raw else None, max_elements) for i, tensor in enumerate(message.inputs)]
    outputs = [output.name for output in message.outputs] or None
    return kserve.InferRequest(message.id or None, inputs, outputs, set(), parameters(message.parameters))


def _input(tensor: Any, raw: bytes | None, max_elements: int) -> kserve.InferInput:
    label = shorten(tensor.name)
    shape, elements = kserve.checked_shape(label, list(tensor.shape), max_elements)
    if raw is not None:
        if tensor.HasField("contents"):
            raise InvalidInferRequestError(f"input {label!r} has both contents and raw_input_contents")
        data = kserve.decode_binary(label, tensor.datatype, raw, elements)
        return kserve.InferInput(tensor.name, tensor.datatype, shape, data)
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise InvalidInferRequestError(f"input {label!r}: unknown datatype {shorten(tensor.datatype)!r}")
    values = getattr(tensor.contents, field)
    if len(values) > elements:
        raise InvalidInferRequestError(f"input {label!r}: shape {shape} holds {elements} elements, data has more")
    # BYTES stay bytes: text models decode them as UTF-8 (kserve._texts), image models take them as files
    return kserve.InferInput(tensor.name, tensor.datatype, shape, list(values))


def infer_response(model: str, version: str, request: kserve.InferRequest, outputs: list[kserve.OutputTensor]) -> Any:
    """The ``ModelInferResponse`` for the outputs the request asked for (all when it named none), raw contents."""
    response = inference.ModelInferResponse(model_name=model, model_version=version, id=request.id or "")
    for output in kserve.select_outputs(request, outputs):
        response.outputs.add(name=output.name, datatype=output.datatype, shape=list(output.array.shape))
        response.raw_output_contents.append(kserve.raw_tensor(output))
    return response


def model_metadata(metadata: dict[str, Any]) -> Any:
    """The ``ModelMetadataResponse`` for :func:`serving.kserve_spec.model_metadata`'s answer; its ``parameters``
    (optiserve's description of the package) travel as JSON in ``properties["optiserve"]``."""
    import orjson

    response = inference.ModelMetadataResponse(
        name=metadata["name"], versions=metadata["versions"], platform=metadata["platform"]
    )
    for where in ("inputs", "outputs"):
        for tensor in metadata[where]:
            getattr(response, where).add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
    for name, value in metadata.get("parameters", {}).items():
        response.properties[name] = orjson.dumps(value).decode()
    return response
