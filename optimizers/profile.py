"""Profile a pipeline as the server runs it: held-out texts arrive in order and are grouped into dynamic batches
(32 items, or the call size if larger); each batch is sorted by length and cut into model calls of 1, 2, 4, …
items, doubling until throughput stops rising. Each call size runs its batches once untimed, then timed: the
profile is the steady state of a server that has met these shapes before. Per call size: items/s, the p50/p99
latency of a dynamic batch, and the process's peak memory growth."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from modelpkg.manifest import ProfileRow, ReplicaLayout, ServingDefaults
from modelpkg.pipeline import CALIBRATION_ITEMS, TensorPipeline, TextPipeline, measure_call_cost

MIN_BATCHES = 8  # dynamic batches per call size, so that p99 is not just the single slowest one
DYNAMIC_BATCH = ServingDefaults().max_batch_size


class PeakMemory:
    """Peak resident memory of this process above a starting point, sampled every few milliseconds."""

    def __init__(self, interval_s: float = 0.005) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval = interval_s
        release_freed_memory()
        self.start_bytes = self._process.memory_info().rss
        self.peak_bytes = self.start_bytes

    @contextmanager
    def sampling(self) -> Iterator[PeakMemory]:
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(self._interval):
                self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)

    @property
    def growth_mb(self) -> float:
        return (self.peak_bytes - self.start_bytes) / 2**20


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc), so that RSS growth measures this model
    rather than what earlier ones left in the allocator."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    libc = ctypes.util.find_library("c")
    if libc:
        try:
            ctypes.CDLL(libc).malloc_trim(0)
        except (OSError, AttributeError):
            pass


def cut_calls_as_served(pipeline: TextPipeline | TensorPipeline, texts: Sequence[Any]) -> None:
    """Let a text pipeline cut its batches into model calls by what a call costs, measured as a replica measures it
    when it starts (``plan_chunks``); tensors are stacked as they come."""
    if isinstance(pipeline, TextPipeline) and pipeline.call_cost_tokens is None and texts:
        pipeline.call_cost_tokens = measure_call_cost(pipeline, texts[0], CALIBRATION_ITEMS)[0].call_in_units


def batch_sizes(limit: int) -> list[int]:
    return [2**i for i in range(int(math.log2(limit)) + 1)]


def profile_pipeline(
    pipeline: TextPipeline | TensorPipeline,
    texts: Sequence[Any],
    max_batch: int = 64,
    items: int = 256,
    threads: int = 1,
    min_gain: float = 0.03,
    memory: PeakMemory | None = None,
    min_batches: int = MIN_BATCHES,
) -> list[ProfileRow]:
    """One row per batch size 1, 2, 4, …, ``max_batch``; stops once two sizes in a row were not ``min_gain``
    above the best throughput before them (those rows are kept, to show the plateau). A text pipeline cuts its
    batches into calls by what a call costs, measured first as a replica measures it (``plan_chunks``)."""
    cut_calls_as_served(pipeline, texts)
    memory = memory or PeakMemory()
    rows: list[ProfileRow] = []
    stale = 0
    with memory.sampling():
        for size in batch_sizes(max_batch):
            dynamic = max(size, DYNAMIC_BATCH)
            count = max(items, dynamic * min_batches)
            stream = [texts[i % len(texts)] for i in range(count)]
            batches = [stream[i : i + dynamic] for i in range(0, count, dynamic)]
            for batch in batches:  # warm-up: allocator, thread pool, and kernels per shape (OpenVINO, oneDNN)
                pipeline.run(batch, max_items=size)
            latencies, start = [], time.perf_counter()
            for batch in batches:
                t0 = time.perf_counter()
                pipeline.run(batch, max_items=size)
                latencies.append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - start
            ms = np.array(latencies) * 1e3
            row = ProfileRow(
                batch_size=dynamic,
                call_items=size,
                threads=threads,
                batches=len(batches),
                items_per_s=count / elapsed,
                p50_ms=float(np.percentile(ms, 50)),
                p99_ms=float(np.percentile(ms, 99)),
                peak_memory_mb=round(memory.growth_mb, 1),
            )
            best = max((r.items_per_s for r in rows), default=0.0)
            rows.append(row)
            stale = stale + 1 if best and row.items_per_s < best * (1 + min_gain) else 0
            if stale == 2:
                break
    return rows


def best_row(profile: Sequence[ProfileRow]) -> ProfileRow:
    return max(profile, key=lambda row: row.items_per_s)


LAYOUT_ITEMS = 256  # held-out inputs each way of using the cores computes, to compare them
LAYOUT_ROUNDS = 3


def replica_layout(
    make_pipeline: Callable[[int], TextPipeline | TensorPipeline],
    texts: Sequence[Any],
    call_items: int,
    cores: int,
    items: int = LAYOUT_ITEMS,
) -> tuple[ReplicaLayout, dict[str, float]]:
    """How to use ``cores`` cores for this model: one replica computing with ``cores`` threads, or one
    single-thread replica per core. Measured, not guessed: the same held-out inputs (in dynamic batches of
    ``DYNAMIC_BATCH``, model calls of ``call_items``) through one pipeline with ``cores`` threads, and through
    ``cores`` single-thread pipelines at once (one per Python thread: the runtimes release the GIL, so this is
    what separate replicas get, minus their separate event loops). ``items`` inputs each way, ``LAYOUT_ROUNDS``
    times in turn, the fastest of each counted (one round disturbed by the machine once cost a package its
    selection: int8 read 284 items/s both ways, 412 when measured again). Returns the faster and both items/s."""
    stream = [texts[i % len(texts)] for i in range(items)]
    batches = [stream[i : i + DYNAMIC_BATCH] for i in range(0, len(stream), DYNAMIC_BATCH)]

    def drain(pipeline: TextPipeline | TensorPipeline, work: list[list[Any]]) -> None:
        for batch in work:
            pipeline.run(batch, max_items=call_items)

    threaded = make_pipeline(cores)
    singles = [make_pipeline(1) for _ in range(cores)]
    for pipeline in (threaded, *singles):
        cut_calls_as_served(pipeline, texts)
        drain(pipeline, batches[:2])  # warm-up
    shares = [batches[i::cores] for i in range(cores)]

    def threads_run() -> float:
        started = time.perf_counter()
        drain(threaded, batches)
        return len(stream) / (time.perf_counter() - started)

    def replicas_run() -> float:
        workers = [threading.Thread(target=drain, args=(p, share)) for p, share in zip(singles, shares, strict=True)]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return len(stream) / (time.perf_counter() - started)

    rounds = [(threads_run(), replicas_run()) for _ in range(LAYOUT_ROUNDS)]
    threads_items_per_s = max(t for t, _ in rounds)
    replicas_items_per_s = max(r for _, r in rounds)
    measured = {"threads_items_per_s": threads_items_per_s, "replicas_items_per_s": replicas_items_per_s}
    return ("replicas" if replicas_items_per_s >= threads_items_per_s else "threads"), measured


QUEUE_SECONDS = 2.0
MAX_QUEUED_ITEMS = 4096  # whatever the model's speed, a replica never holds more than this many items
MAX_BATCH_WAIT_S = 0.01


def serving_defaults(profile: Sequence[ProfileRow], token_p99: int | None = None) -> ServingDefaults:
    """The package's recommended serving config, from its profile:

    - model calls of the fastest batch size (``max_call_items``), dynamic batches of at least 32 items;
    - ``max_batch_tokens``: that many rows of the held-out split's 99th-percentile length (calls of long texts
      are cut smaller, which keeps their latency near the profiled one);
    - batch wait at most the time of one model call of that size (p50 of a dynamic batch over its number of
      calls): waiting longer than one call costs more than it saves; capped at 10 ms;
    - at most ``QUEUE_SECONDS`` of work queued per replica before answering 503 (the replica measures what a
      request costs as it serves), and at most ``MAX_QUEUED_ITEMS`` items, whatever they cost.
    """
    best = best_row(profile)
    call_ms = best.p50_ms * best.call_items / best.batch_size
    defaults = ServingDefaults()
    return ServingDefaults(
        max_batch_size=max(best.call_items, defaults.max_batch_size),
        max_call_items=best.call_items,
        max_batch_tokens=best.call_items * token_p99 if token_p99 else defaults.max_batch_tokens,
        batch_wait_timeout_s=round(min(call_ms / 1e3, MAX_BATCH_WAIT_S), 4),
        max_queued_items=MAX_QUEUED_ITEMS,
        max_queued_s=QUEUE_SECONDS,
    )
