"""The model side of a replica: one package's pipeline behind its own dynamic batch queue, over *items*.

Every input text is its own entry in the batch queue, so a request with N inputs contributes N items to the
dynamic batches (and can span several), and no entry can outgrow a batch size lowered at run time. Each batch is
cut into length-sorted model calls within the token budget (``max_batch_tokens``) and runs on a worker thread,
so the event loop keeps accepting (and batching) requests while the model computes. A replica may hold several
packages: each :class:`ModelRunner` has its own queue (made per instance, since ``@serve.batch`` on a method
would share one queue between instances).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve

from serving.batching import AdaptiveWait
from serving.errors import DeadlineExceededError, OverloadedError
from serving.hardware import detect, serving_mismatch
from serving.metrics import metrics
from serving.package import Manifest, ServingDefaults, load_package
from serving.pipeline import TextPipeline, load_pipeline
from serving.runtimes.base import assigned_gpus

log = logging.getLogger("optiserve")


@dataclass(frozen=True)
class InferResult:
    outputs: np.ndarray  # one row per input: embedding or logits
    tokens: int
    truncated: np.ndarray


# One input's result: (output row, tokens, truncated); None when it was dropped past its queue deadline.
ItemResult = tuple[np.ndarray, int, bool] | None


class ModelRunner:
    """Loads and verifies a package, runs texts through it in dynamic batches, records batch metrics."""

    def __init__(self, package_dir: str, threads: int | None = None) -> None:
        package = load_package(package_dir)
        self.manifest: Manifest = package.manifest
        self.name = self.manifest.name
        self.pipeline = load_pipeline(package, threads)
        self.labels = {"model": self.manifest.name, "version": self.manifest.version}
        self._metrics = metrics()
        self._metrics.model_info.labels(
            **self.labels,
            task=self.manifest.task,
            runtime=self.manifest.runtime,
            precision=self.manifest.precision,
            device=self.pipeline.runtime.device,
            chain=">".join(p.name for p in self.manifest.chain) or "none",
        ).set(1)
        self.hardware_warning = serving_mismatch(self.manifest.requires, self.manifest.hardware, detect())
        if self.hardware_warning:
            log.warning("%s: %s", self.name, self.hardware_warning)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"optiserve-{self.name}")
        self._pending_items = 0
        self._package_settings = self.manifest.serving
        self._batch: Any = serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)(self._run_batch)
        self._wait = AdaptiveWait(self.manifest.serving.batch_wait_timeout_s)
        self.apply({})
        log.info(
            "model ready: %s %s (%s, %s, %s on %s)",
            self.name,
            self.manifest.version,
            self.manifest.task,
            self.manifest.runtime,
            self.manifest.precision,
            self.pipeline.runtime.device,
        )

    def apply(self, overrides: dict[str, Any]) -> None:
        """Retune batching; keys left out take the package's values."""
        settings = ServingDefaults.model_validate({**self._package_settings.model_dump(), **overrides})
        self.settings = settings
        self._wait.max_wait_s = settings.batch_wait_timeout_s
        self._batch.set_max_batch_size(settings.max_batch_size)
        self._batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)

    async def infer(self, texts: list[Any]) -> InferResult:
        """Outputs for ``texts`` (or tensors, for a package without a tokenizer), in order. Raises
        :class:`OverloadedError` when this model already holds ``max_queued_items`` items (a request alone is
        always admitted), and :class:`DeadlineExceededError` when the request waited longer than
        ``queue_timeout_s`` before its batch started."""
        settings = self.settings
        if self._pending_items and self._pending_items + len(texts) > settings.max_queued_items:
            raise OverloadedError(f"{self._pending_items} items are queued (limit {settings.max_queued_items})")
        self._pending_items += len(texts)
        queued = self._metrics.queued_items.labels(**self.labels)
        queued.inc(len(texts))
        try:
            enqueued = time.perf_counter()
            self._wait.arrived(len(texts))
            items = await asyncio.gather(*(self._batch((text, enqueued)) for text in texts))
        finally:
            self._pending_items -= len(texts)
            queued.dec(len(texts))
        done = [item for item in items if item is not None]
        if len(done) < len(items):
            raise DeadlineExceededError(f"request waited more than {settings.queue_timeout_s} s in the queue")
        return InferResult(
            np.stack([row for row, _, _ in done]),
            sum(tokens for _, tokens, _ in done),
            np.array([cut for _, _, cut in done], dtype=bool),
        )

    async def _run_batch(self, items: list[tuple[Any, float]]) -> list[ItemResult]:
        """Run one dynamic batch. Items past their deadline are dropped (``None``) without computing them."""
        started = time.perf_counter()
        m, labels, settings = self._metrics, self.labels, self.settings
        live = [started - enqueued <= settings.queue_timeout_s for _, enqueued in items]
        for _, enqueued in items:
            m.queue_wait.labels(**labels).observe(started - enqueued)
        texts = [text for (text, _), ok in zip(items, live, strict=True) if ok]
        if not texts:
            return [None] * len(items)
        outputs, stats = await asyncio.get_running_loop().run_in_executor(
            self._executor, self.pipeline.run, texts, settings.max_call_items, settings.max_batch_tokens
        )
        elapsed = time.perf_counter() - started
        m.inference_duration.labels(**labels).observe(elapsed)
        m.batch_size.labels(**labels).observe(stats.items)
        m.batch_tokens.labels(**labels).observe(stats.real_tokens)
        m.batch_padding_ratio.labels(**labels).observe(stats.padding_ratio)
        for padded in stats.call_padded_tokens:
            m.call_padded_tokens.labels(**labels).observe(padded)
        if settings.adaptive_wait:
            self._wait.finished(stats.padded_tokens, elapsed)
            self._batch.set_batch_wait_timeout_s(self._wait.wait_s())
        computed = iter(range(len(texts)))
        results: list[ItemResult] = []
        for ok in live:
            if ok:
                row = next(computed)
                results.append((outputs[row], int(stats.token_counts[row]), bool(stats.truncated[row])))
            else:
                results.append(None)
        return results

    def describe(self) -> dict[str, Any]:
        """What this replica runs for the model: for model metadata."""
        runtime = self.pipeline.runtime
        return {
            "task": self.manifest.task,
            "runtime": self.manifest.runtime,
            "precision": self.manifest.precision,
            "device": runtime.device,
            "device_reason": runtime.device_reason,
            "requires": self.manifest.requires,
            "hardware_warning": self.hardware_warning,
            "gpus": assigned_gpus(),
            "node_id": _node_id(),
            "providers": list(getattr(runtime, "providers", [])),
            "batching": self.settings.model_dump(),
        }

    async def check_health(self) -> None:
        """Raise if the runtime can no longer compute."""
        pipeline = self.pipeline
        probe = ["health check"] if isinstance(pipeline, TextPipeline) else [np.zeros(pipeline.item_shape, np.float32)]
        run: Any = pipeline.run
        await asyncio.get_running_loop().run_in_executor(self._executor, run, probe)


def _node_id() -> str | None:
    """The Ray node this replica runs on (None outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


class ServedModels:
    """The packages one replica serves, by model name, each with its own batch queue. Ray Serve calls
    :meth:`reconfigure` with the deployment's ``user_config``: batching keys at the top level apply to every
    model, and ``models: {name: {...}}`` overrides them per model."""

    def __init__(self, package_dirs: list[str], threads: int | None = None) -> None:
        from serving.limits import LIMITS

        self.limits = LIMITS  # this process's limits (methods of Serve's ingress class must not read globals)
        self.models: dict[str, ModelRunner] = {}
        for package_dir in package_dirs:
            runner = ModelRunner(package_dir, threads)
            if runner.name in self.models:
                raise ValueError(f"two packages serve the model name {runner.name!r}; names must be unique")
            self.models[runner.name] = runner

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = dict(user_config or {})
        per_model = config.pop("models", None) or {}
        unknown = sorted(set(per_model) - set(self.models))
        if unknown:
            raise ValueError(f"user_config.models names {unknown}, not served here ({sorted(self.models)})")
        for name, runner in self.models.items():
            runner.apply({**config, **per_model.get(name, {})})

    def names(self, task: str | None = None) -> list[str]:
        return [name for name, runner in self.models.items() if task is None or runner.manifest.task == task]

    async def check_health(self) -> None:
        """Raise (so Ray Serve restarts the replica) if any model's runtime can no longer compute."""
        for runner in self.models.values():
            await runner.check_health()
