"""Profile a pipeline as the server runs it: dynamic batches of held-out text in arrival order, each sorted by
length and cut into model calls by the pipeline exactly as a replica does."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from serving.package import ProfileRow, ServingDefaults
from serving.pipeline import TextPipeline

DEFAULT_CALL_ITEMS = (1, 4, 8, 16, 32)


def profile_pipeline(
    pipeline: TextPipeline,
    texts: Sequence[str],
    batch_size: int = ServingDefaults().max_batch_size,
    call_items: Sequence[int] = DEFAULT_CALL_ITEMS,
    items: int = 256,
    threads: int = 1,
) -> list[ProfileRow]:
    """One row per model-call size: items/s over ``items`` texts and per-batch p50/p99 latency (over
    ``items / batch_size`` batches: few batches make p99 close to the maximum). ``threads`` is recorded."""
    stream = [texts[i % len(texts)] for i in range(items)]
    batches = [stream[i : i + batch_size] for i in range(0, items, batch_size)]
    rows = []
    for call in call_items:
        if call > batch_size:
            continue
        pipeline.run(batches[0], max_items=call)  # warm-up: allocator, thread pool
        latencies = []
        start = time.perf_counter()
        for batch in batches:
            t0 = time.perf_counter()
            pipeline.run(batch, max_items=call)
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
        ms = np.array(latencies) * 1e3
        rows.append(
            ProfileRow(
                batch_size=batch_size,
                call_items=call,
                threads=threads,
                batches=len(batches),
                items_per_s=items / elapsed,
                p50_ms=float(np.percentile(ms, 50)),
                p99_ms=float(np.percentile(ms, 99)),
            )
        )
    return rows


def best_row(profile: Sequence[ProfileRow]) -> ProfileRow:
    return max(profile, key=lambda row: row.items_per_s)


QUEUE_SECONDS = 1.0


def serving_defaults(profile: Sequence[ProfileRow]) -> ServingDefaults:
    """Serve with the model-call size that was fastest in the profile, and queue at most about
    ``QUEUE_SECONDS`` of work per replica (at that speed) before answering 503."""
    best = best_row(profile)
    queue = max(math.ceil(best.items_per_s * QUEUE_SECONDS), 2 * best.batch_size)
    return ServingDefaults(max_batch_size=best.batch_size, max_call_items=best.call_items, max_queued_items=queue)
