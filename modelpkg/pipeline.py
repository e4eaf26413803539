"""Text in, one output row per text (embedding or logits): tokenize, group by length, run the runtime, restore
order. Packages without a tokenizer take tensors: :class:`TensorPipeline` stacks the rows and runs them.

It also shapes a request around the model call: a declared prompt before (:func:`apply_prompt`), a Matryoshka
width after (:func:`cut_to`).

The same pipeline runs inside a server replica (on each dynamic batch), in the optimizer chain's profiler and
in its fidelity check, so what the chain measures is what the server does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelpkg.errors import OptiserveError, PackageError
from modelpkg.manifest import Manifest, ServingDefaults
from modelpkg.package import ModelPackage
from modelpkg.runtimes.base import ModelRuntime
from modelpkg.runtimes.factory import load_runtime
from modelpkg.tokenizer import TextEncoder, TextItem


@dataclass(frozen=True)
class BatchStats:
    """What one call did: items, real and padded tokens, and per item its tokens and whether it was truncated."""

    items: int
    real_tokens: int
    padded_tokens: int
    token_counts: np.ndarray  # per item, in input order
    truncated: np.ndarray  # per item: input was longer than the model's token limit and was cut
    call_padded_tokens: tuple[int, ...] = ()  # per model call: rows x padded width
    encode_s: float = 0.0  # seconds spent tokenizing and padding (0 for tensors)
    model_s: float = 0.0  # seconds spent in the runtime's model calls

    @property
    def padding_ratio(self) -> float:
        """Share of the computed tokens that were padding (0 = none)."""
        return 1.0 - self.real_tokens / self.padded_tokens if self.padded_tokens else 0.0


def plan_chunks(
    lengths: np.ndarray, max_items: int, max_tokens: int, call_cost_tokens: float | None = None
) -> list[np.ndarray]:
    """Split item indices into model calls: sorted by length, each call at most ``max_items`` rows and at most
    ``max_tokens`` padded tokens (a single over-long item still gets its own call).

    Without ``call_cost_tokens`` each call is filled up to those limits. With it (what one more model call costs,
    in padded tokens: its fixed cost over the cost of a token), the cut minimises the batch's cost, calls times
    ``call_cost_tokens`` plus every call's rows times its width: where a call costs little beside its tokens (one
    CPU thread), texts of unlike lengths go to separate calls instead of being padded to the longest; where a call
    is dear (a GPU), calls stay full."""
    if max_items < 1 or max_tokens < 1:
        raise ValueError(f"max_items and max_tokens must be >= 1, got {max_items} and {max_tokens}")
    order = np.argsort(lengths, kind="stable")
    if call_cost_tokens is not None:
        widths = [int(n) for n in lengths[order]]
        return [order[start:end] for start, end in _cheapest_cut(widths, max_items, max_tokens, call_cost_tokens)]
    chunks: list[np.ndarray] = []
    start = 0
    for end in range(1, len(order) + 1):
        rows = end - start
        width = int(lengths[order[end - 1]])
        if rows > 1 and (rows > max_items or rows * width > max_tokens):
            chunks.append(order[start : end - 1])
            start = end - 1
    if start < len(order):
        chunks.append(order[start:])
    return chunks


def _cheapest_cut(widths: list[int], max_items: int, max_tokens: int, call_cost: float) -> list[tuple[int, int]]:
    """Calls ``[start, end)`` over ascending ``widths`` that minimise calls x ``call_cost`` + padded tokens, within
    the limits (dynamic programming over where each call ends: a call's width is its last, longest row)."""
    cost = [0.0] + [float("inf")] * len(widths)
    start_of = [0] * (len(widths) + 1)
    for end in range(1, len(widths) + 1):
        width = widths[end - 1]
        for start in range(end - 1, max(end - max_items, 0) - 1, -1):
            rows = end - start
            if rows > 1 and rows * width > max_tokens:
                break
            total = cost[start] + call_cost + rows * width
            if total < cost[end]:
                cost[end], start_of[end] = total, start
    cuts: list[tuple[int, int]] = []
    end = len(widths)
    while end > 0:
        cuts.append((start_of[end], end))
        end = start_of[end]
    return cuts[::-1]


class TextPipeline:
    def __init__(self, encoder: TextEncoder, runtime: ModelRuntime, output_dim: int) -> None:
        self.encoder = encoder
        self.runtime = runtime
        self.output_dim = output_dim
        # What one more model call costs, in padded tokens (plan_chunks); None: calls are filled to their limits.
        # A server replica measures it when it starts (serving.replica).
        self.call_cost_tokens: float | None = None

    @classmethod
    def from_package(cls, package: ModelPackage, threads: int | None = None) -> TextPipeline:
        if package.manifest.tokenizer is None:
            raise PackageError(f"{package.root}: a text pipeline needs a tokenizer; this package takes tensors")
        encoder = TextEncoder.from_spec(package.root, package.manifest.tokenizer)
        return cls(encoder, load_runtime(package, threads), package.manifest.output_dim)

    def run(
        self, texts: Sequence[TextItem], max_items: int = 32, max_tokens: int = 8192
    ) -> tuple[np.ndarray, BatchStats]:
        """Outputs for ``texts`` (texts, or a reranker's (query, document) pairs) in their order, one row each."""
        started = time.perf_counter()
        encodings = self.encoder.encode(texts)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        out = np.empty((len(texts), self.output_dim), dtype=np.float32)
        call_tokens: list[int] = []
        chunks = plan_chunks(lengths, max_items, max_tokens, self.call_cost_tokens)
        model_s = 0.0
        for rows in chunks:
            batch = self.encoder.pad([encodings[i] for i in rows])
            called = time.perf_counter()
            result = self.runtime.run(batch)
            model_s += time.perf_counter() - called
            if result.shape != (len(rows), self.output_dim):
                raise RuntimeError(
                    f"runtime {self.runtime.name} returned shape {result.shape} for {len(rows)} inputs; "
                    f"expected ({len(rows)}, {self.output_dim})"
                )
            out[rows] = result
            call_tokens.append(batch.padded_tokens)
        truncated = np.fromiter((bool(e.overflowing) for e in encodings), dtype=bool, count=len(encodings))
        encode_s = time.perf_counter() - started - model_s
        stats = BatchStats(
            len(texts), int(lengths.sum()), sum(call_tokens), lengths, truncated, tuple(call_tokens), encode_s, model_s
        )
        return out, stats

    def run_as_served(self, texts: Sequence[TextItem], settings: ServingDefaults) -> np.ndarray:
        """Outputs as a replica computes them for ``texts`` arriving in this order: dynamic batches of
        ``max_batch_size`` items, each cut into length-sorted model calls. (With dynamic int8's per-call
        activation scales the outputs depend on what shares a model call, so this, not one big sorted pass, is what
        to check.)
        """
        parts = [
            self.run(texts[i : i + settings.max_batch_size], settings.max_call_items, settings.max_batch_tokens)[0]
            for i in range(0, len(texts), settings.max_batch_size)
        ]
        return np.concatenate(parts) if parts else np.empty((0, self.output_dim), dtype=np.float32)


class TensorPipeline:
    """One float32 tensor per item (e.g. an image), stacked into model calls of at most ``max_items`` rows."""

    def __init__(self, runtime: ModelRuntime, item_shape: tuple[int, ...], output_dim: int) -> None:
        self.runtime = runtime
        self.item_shape = item_shape
        self.output_dim = output_dim
        self.encoder = None  # no tokenizer

    @classmethod
    def from_package(cls, package: ModelPackage, threads: int | None = None) -> TensorPipeline:
        spec = package.manifest.inputs[0]
        shape = tuple(int(d) for d in spec.shape[1:])
        return cls(load_runtime(package, threads), shape, package.manifest.output_dim)

    def run(self, items: list[np.ndarray], max_items: int = 32, max_tokens: int = 0) -> tuple[np.ndarray, BatchStats]:
        """Outputs for ``items`` in order (``max_tokens`` is ignored: tensors have no tokens)."""
        stacked = np.stack(items).astype(np.float32, copy=False) if items else np.empty((0, *self.item_shape))
        if stacked.shape[1:] != self.item_shape:
            raise ValueError(f"items have shape {stacked.shape[1:]}; this model takes {self.item_shape}")
        started = time.perf_counter()
        parts = [self.runtime.run_array(stacked[i : i + max_items]) for i in range(0, len(items), max_items)]
        model_s = time.perf_counter() - started
        out = np.concatenate(parts) if parts else np.empty((0, self.output_dim), dtype=np.float32)
        zeros = np.zeros(len(items), dtype=np.int64)
        return out, BatchStats(len(items), 0, 0, zeros, zeros.astype(bool), (), model_s=model_s)

    def run_as_served(self, items: list[np.ndarray], settings: ServingDefaults) -> np.ndarray:
        return self.run(items, settings.max_call_items)[0]


Pipeline = TextPipeline | TensorPipeline


def load_pipeline(package: ModelPackage, threads: int | None = None) -> Pipeline:
    """The pipeline a package needs: text (it has a tokenizer) or tensors."""
    if package.manifest.takes_text:
        return TextPipeline.from_package(package, threads)
    return TensorPipeline.from_package(package, threads)


CALIBRATION_ITEMS = 8  # copies of the probe in the call that measures the cost per unit
CALIBRATION_REPEATS = 3


@dataclass(frozen=True)
class CallCost:
    """What a model call costs as measured: a fixed part per call and a part per unit (a token for text, an item
    for tensors)."""

    overhead_s: float
    seconds_per_unit: float

    @property
    def call_in_units(self) -> float:
        """One more call, in units (at least one): what :func:`plan_chunks` weighs against padding."""
        return max(self.overhead_s / self.seconds_per_unit, 1.0)


def measure_call_cost(pipeline: Pipeline, item: Any, count: int) -> tuple[CallCost, np.ndarray]:
    """Time a call of ``item`` alone and one of ``count`` copies (no padding between them), each the fastest of
    ``CALIBRATION_REPEATS`` after a warm-up call (one stalled call on a busy machine is not the model's speed); the
    difference gives the cost per unit and the rest the fixed cost per call. Returns it and ``item``'s output."""
    run: Any = pipeline.run
    run([item])  # the first call may compile

    def fastest(items: list[Any]) -> tuple[float, Any]:
        timed = []
        for _ in range(CALIBRATION_REPEATS):
            started = time.perf_counter()
            result = run(items)
            timed.append((time.perf_counter() - started, result))
        return min(timed, key=lambda pair: pair[0])

    one_s, (alone, one) = fastest([item])
    many_s, (_, many) = fastest([item] * count)
    many_s = max(many_s, 1e-6)
    text = isinstance(pipeline, TextPipeline)
    one_units, many_units = (max(s.real_tokens if text else s.items, 1) for s in (one, many))
    per_unit = (many_s - one_s) / (many_units - one_units) if many_units > one_units else 0.0
    if per_unit <= 0:  # too close to tell apart: the one-input call is the fixed cost, the rest (a tenth at least)
        per_unit = max(many_s - one_s, 0.1 * many_s) / many_units
    return CallCost(max(one_s - per_unit * one_units, 0.0), per_unit), alone[0]


# -- request shaping: prompts and Matryoshka widths, before and after the model runs ---------------------------


class UnknownPromptError(OptiserveError, ValueError):
    """A request named a prompt the package does not declare."""

    status = 400
    type = "invalid_request_error"
    code = "unknown_prompt"
    public_message = None


class DimensionsError(OptiserveError, ValueError):
    """A request asked for an embedding width the package cannot give."""

    status = 422
    type = "invalid_request_error"
    code = "invalid_value"
    public_message = None


def apply_prompt(
    manifest: Manifest, texts: list[str], prompt_name: str | None = None, prompt: str | None = None
) -> list[str]:
    """``texts`` with the named prompt prepended, as sentence-transformers' ``encode(prompt_name=...)`` does, or
    with the text ``prompt`` (``encode(prompt=...)``); neither: the default prompt where the package declares one,
    else ``texts`` unchanged. Raises :class:`UnknownPromptError` for a name the package does not declare (or for
    both at once)."""
    if prompt is not None:
        if prompt_name is not None:
            raise UnknownPromptError("give a prompt_name or a prompt text, not both")
        return [prompt + text for text in texts]
    name = prompt_name if prompt_name is not None else manifest.default_prompt_name
    if name is None:
        return list(texts)
    if name not in manifest.prompts:
        known = ", ".join(sorted(manifest.prompts)) or "none"
        raise UnknownPromptError(f"model {manifest.name!r} has no prompt {name!r}; its prompts: {known}")
    return [manifest.prompts[name] + text for text in texts]


def check_dimensions(manifest: Manifest, dimensions: int | None) -> None:
    """Raise :class:`DimensionsError` unless the package can give vectors of ``dimensions`` values: its own width
    (or ``None``), or, where it declares Matryoshka widths, any width below it."""
    width = manifest.output_dim
    if dimensions is None or dimensions == width:
        return
    if not manifest.matryoshka_dims:
        raise DimensionsError(
            f"dimensions: model {manifest.name!r} returns {width} and declares no Matryoshka widths (its vectors "
            f"cannot be cut), so dimensions must be {width}; got {dimensions}"
        )
    if not 0 < dimensions < width:
        raise DimensionsError(f"dimensions: model {manifest.name!r} returns at most {width}; got {dimensions}")


def cut_to(manifest: Manifest, vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """``vectors`` cut to their first ``dimensions`` values (``None`` or the full width: unchanged), then
    re-normalized to unit length where the package's vectors are normalized, as Matryoshka models are used.
    Raises :class:`DimensionsError` for a width the package cannot give (:func:`check_dimensions`)."""
    check_dimensions(manifest, dimensions)
    if dimensions is None or dimensions == manifest.output_dim:
        return vectors
    return cut_vectors(vectors, dimensions, manifest.pooling.normalize)


def cut_vectors(vectors: np.ndarray, width: int, normalize: bool = True) -> np.ndarray:
    """The first ``width`` values of each row (a Matryoshka prefix), re-normalized to unit length if
    ``normalize``."""
    cut = np.ascontiguousarray(vectors[:, :width], dtype=np.float32)
    if normalize:
        cut /= np.linalg.norm(cut, axis=1, keepdims=True).clip(min=1e-12)
    return cut
