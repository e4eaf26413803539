"""KServe v2 (Open Inference Protocol) view of a served model: its metadata (platform, input and output tensors),
the items an infer request carries for it, and the output tensors of its result. The wire format (JSON and the
binary tensor extension) is :mod:`serving.kserve`; this module maps a package's manifest and a runner onto it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelpkg.manifest import Manifest
from modelpkg.pipeline import DimensionsError, UnknownPromptError, apply_prompt, check_dimensions, cut_to
from serving import kserve
from serving.api import check_texts, rerank_scores, softmax
from serving.errors import InvalidInferRequestError
from serving.replica import InferResult, ModelRunner

TEXT_INPUT = "text"  # the one input of a text model
IMAGE_INPUT = "image"  # the one input of an image model: encoded image files (BYTES)
# A reranker's two inputs: the query (one, for every document, or one per document) and the documents.
RERANK_INPUTS = ("query", "document")


def platform_name(runtime: str) -> str:
    return {"onnxruntime": "onnxruntime_onnx", "torch": "pytorch_libtorch"}.get(runtime, runtime)


def input_metadata(manifest: Manifest) -> list[dict[str, Any]]:
    if manifest.task == "rerank":
        return [{"name": name, "datatype": "BYTES", "shape": [-1]} for name in RERANK_INPUTS]
    if manifest.takes_text:
        return [{"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]}]
    if manifest.takes_images:
        return [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]}]
    spec = manifest.inputs[0]
    return [{"name": spec.name, "datatype": "FP32", "shape": [-1, *spec.shape[1:]]}]


def output_metadata(manifest: Manifest) -> list[dict[str, Any]]:
    width = manifest.output_dim
    if manifest.task == "rerank":
        return [
            {"name": "score", "datatype": "FP32", "shape": [-1]},
            {"name": "logits", "datatype": "FP32", "shape": [-1, 1]},
        ]
    if manifest.task == "classification":
        return [
            {"name": "logits", "datatype": "FP32", "shape": [-1, width]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, width]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ]
    return [{"name": "embedding", "datatype": "FP32", "shape": [-1, width]}]


def model_metadata(runner: ModelRunner) -> dict[str, Any]:
    m = runner.manifest
    return {
        "name": runner.name,
        "versions": [m.version],
        "platform": platform_name(m.runtime),
        "inputs": input_metadata(m),
        "outputs": output_metadata(m),
        "parameters": {"optiserve": runner.describe()},
    }


def max_elements(manifest: Manifest, max_inputs: int) -> int:
    """The most tensor elements one infer request may carry for this model: ``max_inputs`` items (a reranker's:
    as many queries and documents)."""
    if manifest.task == "rerank":
        return 2 * max_inputs
    if manifest.takes_text or manifest.takes_images:
        return max_inputs
    return max_inputs * math.prod(int(d) for d in manifest.inputs[0].shape[1:])


@dataclass(frozen=True)
class TextOptions:
    """What an infer request's ``parameters`` ask of a text model, as ``/v1/embeddings`` fields do: a prompt by
    name or as text and a Matryoshka width (embeddings), and whether to cut an over-long input (any text model).
    Other parameters are left to the protocol (``binary_data_output``) or ignored, as Triton does."""

    prompt_name: str | None = None
    prompt: str | None = None
    dimensions: int | None = None
    truncate: bool | None = None


EMBEDDING_OPTIONS = ("prompt_name", "prompt", "dimensions")


def request_options(parsed: kserve.InferRequest, manifest: Manifest) -> TextOptions:
    """The request's :class:`TextOptions`, each checked for its type and for this model; raises a 400 naming the
    first that is wrong."""
    given = {k: v for k, v in parsed.parameters.items() if k in (*EMBEDDING_OPTIONS, "truncate")}
    for name, kind in (("prompt_name", str), ("prompt", str), ("dimensions", int), ("truncate", bool)):
        value = given.get(name)
        if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            raise InvalidInferRequestError(f"parameters.{name} must be {kind.__name__}, got {type(value).__name__}")
    if manifest.task != "embedding" and (asked := [k for k in EMBEDDING_OPTIONS if given.get(k) is not None]):
        raise InvalidInferRequestError(
            f"parameters {asked} apply to embedding models; {manifest.name!r} is {manifest.task}"
        )
    if given and not manifest.takes_text:
        raise InvalidInferRequestError(
            f"parameters {sorted(given)} apply to text models; {manifest.name!r} takes "
            f"{'images' if manifest.takes_images else 'tensors'}"
        )
    options = TextOptions(**given)
    try:
        check_dimensions(manifest, options.dimensions)
    except DimensionsError as exc:
        raise InvalidInferRequestError(f"parameters.{exc}") from None
    return options


def request_items(
    parsed: kserve.InferRequest, manifest: Manifest, max_inputs: int, options: TextOptions | None = None
) -> list[Any]:
    """The items to run: the texts of a text model's input (with the prompt ``options`` or the package name), a
    reranker's (query, document) pairs, an image model's encoded files, or one float32 array per item of a tensor
    model's."""
    if manifest.task == "rerank":
        return rerank_items(parsed, max_inputs)
    if manifest.takes_text:
        items: list[Any] = kserve.text_input(parsed, TEXT_INPUT, max_inputs)
        try:
            check_texts(items)
        except ValueError as exc:
            raise InvalidInferRequestError(f"input {TEXT_INPUT!r}: {exc}") from None
        if manifest.task != "embedding":
            return items
        options = options or TextOptions()
        try:
            return apply_prompt(manifest, items, options.prompt_name, options.prompt)
        except UnknownPromptError as exc:
            raise InvalidInferRequestError(str(exc)) from None
    if manifest.takes_images:
        return kserve.image_input(parsed, IMAGE_INPUT, max_inputs)  # decoded by the runner, off the event loop
    spec = manifest.inputs[0]
    shape = tuple(int(d) for d in spec.shape[1:])
    return kserve.tensor_input(parsed, spec.name, shape, max_inputs)


def rerank_items(parsed: kserve.InferRequest, max_inputs: int) -> list[tuple[str, str]]:
    """(query, document) pairs from a reranker's two BYTES inputs: one query for every document, or one each."""
    texts = kserve.text_inputs(parsed, RERANK_INPUTS, max_inputs)
    queries, documents = (texts[name] for name in RERANK_INPUTS)
    if len(queries) not in (1, len(documents)):
        raise InvalidInferRequestError(
            f"input 'query' holds {len(queries)} texts; send one (for every document) or one per document "
            f"({len(documents)})"
        )
    for name, items in texts.items():
        try:
            check_texts(list(items))
        except ValueError as exc:
            raise InvalidInferRequestError(f"input {name!r}: {exc}") from None
    return list(zip(queries * len(documents) if len(queries) == 1 else queries, documents, strict=True))


def output_tensors(
    runner: ModelRunner, result: InferResult, options: TextOptions | None = None
) -> list[kserve.OutputTensor]:
    if runner.manifest.task == "rerank":
        scores = rerank_scores(result.outputs, runner.manifest.score_activation)
        return [kserve.OutputTensor("score", "FP32", scores), kserve.OutputTensor("logits", "FP32", result.outputs)]
    if runner.manifest.task == "classification":
        labels = runner.manifest.labels
        predicted = np.array([labels[i] for i in result.outputs.argmax(axis=1)], dtype=object)
        return [
            kserve.OutputTensor("logits", "FP32", result.outputs),
            kserve.OutputTensor("probabilities", "FP32", softmax(result.outputs)),
            kserve.OutputTensor("label", "BYTES", predicted),
        ]
    dimensions = options.dimensions if options is not None else None
    return [kserve.OutputTensor("embedding", "FP32", cut_to(runner.manifest, result.outputs, dimensions))]
