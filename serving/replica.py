"""The model side of a replica: one package's pipeline behind Ray Serve's ``@serve.batch``, over *items*.

Every input text is its own entry in the batch queue, so a request with N inputs contributes N items to the
dynamic batches (and can span several), and no entry can outgrow a batch size lowered at run time. Each batch
runs on a worker thread, so the event loop keeps accepting (and batching) requests while the model computes.
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

from serving.errors import DeadlineExceededError, OverloadedError
from serving.limits import LIMITS
from serving.metrics import metrics, set_labels
from serving.package import ServingDefaults, load_package
from serving.pipeline import EmbeddingPipeline

log = logging.getLogger("optiserve")


@dataclass(frozen=True)
class EmbedResult:
    embeddings: np.ndarray
    tokens: int
    truncated: np.ndarray


# One input's result: (embedding, tokens, truncated); None when it was dropped past its queue deadline.
ItemResult = tuple[np.ndarray, int, bool] | None


class EmbeddingReplica:
    """Loads and verifies a package, embeds texts in dynamic batches, records batch metrics."""

    def __init__(self, package_dir: str, threads: int | None = None) -> None:
        package = load_package(package_dir)
        manifest = package.manifest
        self.model_name = manifest.name
        self.limits = LIMITS  # this process's limits (methods of Serve's ingress class must not read globals)
        self.pipeline = EmbeddingPipeline.from_package(package, threads)
        self.labels = {"model": manifest.name, "version": manifest.version}
        set_labels(manifest.name, manifest.version)
        self._metrics = metrics()
        self._metrics.model_info.labels(
            **self.labels,
            runtime=manifest.runtime,
            precision=manifest.precision,
            chain=">".join(p.name for p in manifest.chain) or "none",
        ).set(1)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="optiserve-model")
        self._pending_items = 0
        self._package_settings = manifest.serving
        self._apply(manifest.serving)
        log.info("replica ready: %s %s (%s, %s)", manifest.name, manifest.version, manifest.runtime, manifest.precision)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Retune batching of a running replica (Ray Serve calls this on ``user_config`` changes). Keys left out
        take the package's values."""
        self._apply(ServingDefaults.model_validate({**self._package_settings.model_dump(), **(user_config or {})}))

    def _apply(self, settings: ServingDefaults) -> None:
        self.settings = settings
        self._batch.set_max_batch_size(settings.max_batch_size)
        self._batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)

    async def embed(self, texts: list[str]) -> EmbedResult:
        """Embeddings for ``texts``, in order. Raises :class:`OverloadedError` when the replica already holds
        ``max_queued_items`` items (a request alone is always admitted), and :class:`DeadlineExceededError` when
        the request waited longer than ``queue_timeout_s`` before its batch started."""
        settings = self.settings
        if self._pending_items and self._pending_items + len(texts) > settings.max_queued_items:
            raise OverloadedError(f"{self._pending_items} items are queued (limit {settings.max_queued_items})")
        self._pending_items += len(texts)
        try:
            enqueued = time.perf_counter()
            items = await asyncio.gather(*(self._batch((text, enqueued)) for text in texts))
        finally:
            self._pending_items -= len(texts)
        done = [item for item in items if item is not None]
        if len(done) < len(items):
            raise DeadlineExceededError(f"request waited more than {settings.queue_timeout_s} s in the queue")
        return EmbedResult(
            np.stack([embedding for embedding, _, _ in done]),
            sum(tokens for _, tokens, _ in done),
            np.array([cut for _, _, cut in done], dtype=bool),
        )

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _batch(self, items: list[tuple[str, float]]) -> list[ItemResult]:
        """Run one dynamic batch. Items past their deadline are dropped (``None``) without computing them."""
        started = time.perf_counter()
        m, labels, settings = self._metrics, self.labels, self.settings
        live = [started - enqueued <= settings.queue_timeout_s for _, enqueued in items]
        for _, enqueued in items:
            m.queue_wait.labels(**labels).observe(started - enqueued)
        texts = [text for (text, _), ok in zip(items, live, strict=True) if ok]
        if not texts:
            return [None] * len(items)
        embeddings, stats = await asyncio.get_running_loop().run_in_executor(
            self._executor, self.pipeline.embed, texts, settings.max_call_items, settings.max_batch_tokens
        )
        m.inference_duration.labels(**labels).observe(time.perf_counter() - started)
        m.batch_size.labels(**labels).observe(stats.items)
        m.batch_tokens.labels(**labels).observe(stats.real_tokens)
        m.batch_padding_ratio.labels(**labels).observe(stats.padding_ratio)
        computed = iter(range(len(texts)))
        results: list[ItemResult] = []
        for ok in live:
            if ok:
                row = next(computed)
                results.append((embeddings[row], int(stats.token_counts[row]), bool(stats.truncated[row])))
            else:
                results.append(None)
        return results

    async def check_health(self) -> None:
        """Raise (so Ray Serve restarts the replica) if the runtime can no longer embed."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self.pipeline.embed, ["health check"])
