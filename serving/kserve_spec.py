"""KServe v2 (Open Inference Protocol) view of a served model: its metadata (platform, input and output tensors),
the items an infer request carries for it, and the output tensors of its result. The wire format (JSON and the
binary tensor extension) is :mod:`serving.kserve`; this module maps a package's manifest and a runner onto it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from serving import kserve
from serving.api import check_texts, softmax
from serving.package import Manifest
from serving.replica import InferResult, ModelRunner

TEXT_INPUT = "text"  # the one input of a text model


def platform_name(runtime: str) -> str:
    return {"onnxruntime": "onnxruntime_onnx", "torch": "pytorch_libtorch"}.get(runtime, runtime)


def input_metadata(manifest: Manifest) -> dict[str, Any]:
    if manifest.takes_text:
        return {"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]}
    spec = manifest.inputs[0]
    return {"name": spec.name, "datatype": "FP32", "shape": [-1, *spec.shape[1:]]}


def model_metadata(runner: ModelRunner) -> dict[str, Any]:
    m = runner.manifest
    outputs = (
        [
            {"name": "logits", "datatype": "FP32", "shape": [-1, m.output_dim]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, m.output_dim]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ]
        if m.task == "classification"
        else [{"name": "embedding", "datatype": "FP32", "shape": [-1, m.output_dim]}]
    )
    return {
        "name": runner.name,
        "versions": [m.version],
        "platform": platform_name(m.runtime),
        "inputs": [input_metadata(m)],
        "outputs": outputs,
        "parameters": {"optiserve": runner.describe()},
    }


def max_elements(manifest: Manifest, max_inputs: int) -> int:
    """The most tensor elements one infer request may carry for this model: ``max_inputs`` items."""
    if manifest.takes_text:
        return max_inputs
    return max_inputs * math.prod(int(d) for d in manifest.inputs[0].shape[1:])


def request_items(parsed: kserve.InferRequest, manifest: Manifest, max_inputs: int) -> list[Any]:
    """The items to run: the texts of a text model's input, or one float32 array per item of a tensor model's."""
    if manifest.takes_text:
        items: list[Any] = kserve.text_input(parsed, TEXT_INPUT, max_inputs)
        try:
            check_texts(items)
        except ValueError as exc:
            raise kserve.bad_request(f"input {TEXT_INPUT!r}: {exc}") from None
        return items
    spec = manifest.inputs[0]
    shape = tuple(int(d) for d in spec.shape[1:])
    return kserve.tensor_input(parsed, spec.name, shape, max_inputs)


def output_tensors(runner: ModelRunner, result: InferResult) -> list[kserve.OutputTensor]:
    if runner.manifest.task == "classification":
        labels = runner.manifest.labels
        predicted = np.array([labels[i] for i in result.outputs.argmax(axis=1)], dtype=object)
        return [
            kserve.OutputTensor("logits", "FP32", result.outputs),
            kserve.OutputTensor("probabilities", "FP32", softmax(result.outputs)),
            kserve.OutputTensor("label", "BYTES", predicted),
        ]
    return [kserve.OutputTensor("embedding", "FP32", result.outputs)]
