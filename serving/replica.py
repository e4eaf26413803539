"""The model side of a replica: one package's pipeline behind Ray Serve's ``@serve.batch``, over *items*.

A request with N inputs contributes N items to dynamic batches: ``batch_size_fn`` counts items, and a request
larger than one batch is split across batches and reassembled in order. Each batch runs on a worker thread, so
the event loop keeps accepting (and batching) requests while the model computes.
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
from serving.metrics import metrics
from serving.package import ServingDefaults, load_package
from serving.pipeline import EmbeddingPipeline

log = logging.getLogger("optiserve")


@dataclass(frozen=True)
class EmbedResult:
    embeddings: np.ndarray
    tokens: int
    truncated: np.ndarray


def _items_in(requests: list[tuple[list[str], float]]) -> int:
    return sum(len(texts) for texts, _ in requests)


class EmbeddingReplica:
    """Loads and verifies a package, embeds texts in dynamic batches, records batch metrics."""

    def __init__(self, package_dir: str, threads: int | None = None) -> None:
        package = load_package(package_dir)
        manifest = package.manifest
        self.model_name = manifest.name
        self.limits = LIMITS  # this process's limits (methods of Serve's ingress class must not read globals)
        self.pipeline = EmbeddingPipeline.from_package(package, threads)
        self.labels = {"model": manifest.name, "version": manifest.version}
        self._metrics = metrics()
        self._metrics.model_info.labels(
            **self.labels,
            runtime=manifest.runtime,
            precision=manifest.precision,
            chain=">".join(p.name for p in manifest.chain) or "none",
        ).set(1)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="optiserve-model")
        self._pending_items = 0
        self._apply(manifest.serving)
        log.info("replica ready: %s %s (%s, %s)", manifest.name, manifest.version, manifest.runtime, manifest.precision)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Retune batching of a running replica (Ray Serve calls this on ``user_config`` changes)."""
        self._apply(ServingDefaults.model_validate({**self.settings.model_dump(), **(user_config or {})}))

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
            size = settings.max_batch_size
            enqueued = time.perf_counter()
            parts = await asyncio.gather(
                *(self._batch((texts[i : i + size], enqueued)) for i in range(0, len(texts), size))
            )
        finally:
            self._pending_items -= len(texts)
        if any(part is None for part in parts):
            raise DeadlineExceededError(f"request waited more than {settings.queue_timeout_s} s in the queue")
        return EmbedResult(
            np.concatenate([p.embeddings for p in parts]),
            sum(p.tokens for p in parts),
            np.concatenate([p.truncated for p in parts]),
        )

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005, batch_size_fn=_items_in)
    async def _batch(self, requests: list[tuple[list[str], float]]) -> list[EmbedResult | None]:
        """Run one dynamic batch. Requests past their deadline are dropped (``None``) without computing them."""
        started = time.perf_counter()
        m, labels = self._metrics, self.labels
        live = [started - enqueued <= self.settings.queue_timeout_s for _, enqueued in requests]
        for _, enqueued in requests:
            m.queue_wait.labels(**labels).observe(started - enqueued)
        if not any(live):
            return [None] * len(requests)
        texts = [text for (chunk, _), ok in zip(requests, live, strict=True) if ok for text in chunk]
        settings = self.settings
        embeddings, stats = await asyncio.get_running_loop().run_in_executor(
            self._executor, self.pipeline.embed, texts, settings.max_call_items, settings.max_batch_tokens
        )
        m.inference_duration.labels(**labels).observe(time.perf_counter() - started)
        m.batch_size.labels(**labels).observe(stats.items)
        m.batch_tokens.labels(**labels).observe(stats.real_tokens)
        m.batch_padding_ratio.labels(**labels).observe(stats.padding_ratio)
        results: list[EmbedResult | None] = []
        start = 0
        for (chunk, _), ok in zip(requests, live, strict=True):
            if not ok:
                results.append(None)
                continue
            end = start + len(chunk)
            tokens = int(stats.token_counts[start:end].sum())
            results.append(EmbedResult(embeddings[start:end], tokens, stats.truncated[start:end]))
            start = end
        return results

    async def check_health(self) -> None:
        """Raise (so Ray Serve restarts the replica) if the runtime can no longer embed."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self.pipeline.embed, ["health check"])
