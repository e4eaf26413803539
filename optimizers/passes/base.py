"""The pass framework: a pass is a name, a typed config and one function from an input artifact to a new one.

Passes register themselves with :func:`register`; the chain looks them up by the name a recipe gives. Heavy or
optional libraries (onnxruntime.quantization, TensorRT, torch.compile) are imported inside the pass function,
so importing the registry costs nothing. A pass that cannot run here (no CUDA, no TensorRT) raises
:class:`PassUnavailableError` with the reason, which the report shows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

from modelpkg.errors import OptiserveError
from modelpkg.manifest import Fidelity, FidelityBudget
from optimizers.source import SourceModel

Format = Literal["hf", "onnx", "module", "openvino"]
OPENVINO_MODEL = "model.xml"  # inside an ``openvino`` artifact's directory, beside its weights ``model.bin``
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
Precision = Literal["fp32", "fp16", "bf16", "int8"]


class PassConfig(BaseModel):
    """Base of every pass config: strict (unknown keys are errors) and hashable into the cache key."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Artifact:
    """A model at one point of a chain: a Hugging Face directory (``hf``, run by torch), a plain PyTorch
    ``module`` directory (``optimizers.modules``), an ONNX file, or an OpenVINO IR directory (``openvino``).
    ``options`` are the runtime's settings: ``modelpkg.manifest.TorchOptions`` fields for torch,
    ``OpenVINOOptions`` fields for OpenVINO."""

    path: Path
    format: Format
    precision: Precision = "fp32"
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def runtime(self) -> Literal["torch", "onnxruntime", "openvino"]:
        return {"onnx": "onnxruntime", "openvino": "openvino"}.get(self.format, "torch")  # type: ignore[return-value]

    @property
    def model_file(self) -> Path:
        """What the runtime loads: the IR's ``.xml`` for OpenVINO, else the path itself."""
        return self.path / OPENVINO_MODEL if self.format == "openvino" else self.path


@dataclass(frozen=True)
class PassOutput:
    """What a pass made, plus anything worth reporting about how (tries, excluded nodes, training curve)."""

    artifact: Artifact
    details: dict[str, Any] = field(default_factory=dict)


class Evaluator(Protocol):
    """Fidelity of ``artifact`` against the source model on ``items`` (default: the validation split)."""

    def __call__(self, artifact: Artifact, items: list[Any] | None = None) -> Fidelity: ...


@dataclass(frozen=True)
class PassContext:
    """What a pass may use besides its input: the source model (tokenizer, task, the fidelity reference), the
    corpus splits, the budget and an evaluator on the validation split (for accuracy-aware passes)."""

    source: SourceModel
    out_dir: Path
    train: list[str]
    calibration: list[str]
    validation: list[str]
    budget: FidelityBudget
    evaluate: Evaluator
    device: str = "cpu"

    def source_for(self, artifact: Artifact) -> SourceModel:
        """The source model with its weights replaced by ``artifact`` (a student directory keeps the tokenizer)."""
        if artifact.format in ("onnx", "openvino"):
            return self.source
        tokenizer = self.source.tokenizer
        if tokenizer is not None:  # keep reading the tokenizer from the source directory
            tokenizer = tokenizer.model_copy(update={"path": str(self.source.path / tokenizer.path)})
        return self.source.model_copy(update={"path": artifact.path, "tokenizer": tokenizer})


def model_feeds(source: SourceModel, items: list[Any]) -> dict[str, np.ndarray]:
    """The model's inputs for ``items``, by input name: tokenized and padded texts (only the inputs the model
    takes: no ``token_type_ids`` for RoBERTa, DistilBERT, …), or stacked tensors."""
    if source.tokenizer is None:
        assert source.input is not None
        return {source.input.name: np.stack(items).astype(np.float32)}
    from modelpkg.tokenizer import TextEncoder

    encoder = TextEncoder.from_spec(source.path, source.tokenizer)
    batch = encoder.pad(encoder.encode(items))
    return {name: getattr(batch, name) for name in TEXT_INPUTS if name in source.text_inputs}


def torch_inputs(source: SourceModel, items: list[Any]) -> tuple[Any, ...]:
    """``model_feeds`` as torch tensors, in the order the model's ``forward`` takes them."""
    import torch

    return tuple(torch.from_numpy(array) for array in model_feeds(source, items).values())


class PassUnavailableError(OptiserveError):
    """The pass cannot run on this machine (e.g. no CUDA); the message says why."""


class PassFailedError(OptiserveError):
    """The pass ran but could not produce an acceptable artifact (e.g. no quantization within budget)."""

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


PassFunction = Callable[[Artifact, Any, PassContext], PassOutput]


@dataclass(frozen=True)
class PassSpec:
    name: str
    config_type: type[PassConfig]
    run: PassFunction
    accepts: tuple[Format, ...]
    produces: Format | None = None  # None: the same format it takes
    uses_budget: bool = False  # the output depends on the budget, so the budget is part of the cache key
    libraries: tuple[str, ...] = ()  # whose versions go into the cache key
    doc: str = ""
    version: int = 1  # bumped whenever the pass's output changes for the same input and config (cache key)


REGISTRY: dict[str, PassSpec] = {}


def register(
    name: str,
    config_type: type[PassConfig],
    accepts: tuple[Format, ...],
    produces: Format | None = None,
    uses_budget: bool = False,
    libraries: tuple[str, ...] = (),
    version: int = 1,
) -> Callable[[PassFunction], PassFunction]:
    """Register ``fn(artifact, config, context) -> PassOutput`` under ``name``; bump ``version`` whenever the
    function's output changes, so the cache never hands back what an older version made."""

    def decorate(fn: PassFunction) -> PassFunction:
        if name in REGISTRY:
            raise ValueError(f"pass {name!r} is registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        REGISTRY[name] = PassSpec(name, config_type, fn, accepts, produces, uses_budget, libraries, doc, version)
        return fn

    return decorate


def get_pass(name: str) -> PassSpec:
    _load_builtin_passes()
    try:
        return REGISTRY[name]
    except KeyError:
        raise OptiserveError(f"unknown pass {name!r}; known passes: {', '.join(sorted(REGISTRY))}") from None


def _load_builtin_passes() -> None:
    import optimizers.passes  # noqa: F401  (importing the package registers every built-in pass)


def out_path(context: PassContext, name: str) -> Path:
    """A fresh path in the pass's output directory."""
    context.out_dir.mkdir(parents=True, exist_ok=True)
    return context.out_dir / name
