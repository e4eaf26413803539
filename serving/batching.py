"""Adaptive batch wait: how long a replica holds a batch open for more items.

A batch of ``n`` padded tokens takes about ``a·n + b`` seconds; ``b`` is the fixed cost of a model call (kernel
launches, session overhead), the part batching saves. Waiting ``w`` seconds for more items delays every item in
the batch by ``w`` and gathers about ``λ·w`` more of them (``λ`` = arrival rate), saving up to ``b`` per model
call not made. So waiting pays only when at least one more item is expected within ``b`` (``λ·b ≥ 1``), and never
for longer than ``b``: past that, running now and starting the next batch sooner is faster. Under heavy load
batches fill without waiting (items queue while the previous batch runs), so this matters at light and medium
load: on CPU, where ``b`` is small, it mostly stops waiting; on GPU, where ``b`` dominates, it waits.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np

MIN_SAMPLES = 8


class AdaptiveWait:
    """Fits ``seconds ≈ a·tokens + b`` over the last ``window`` batches and counts arrivals over ``horizon_s``."""

    def __init__(self, max_wait_s: float, window: int = 64, horizon_s: float = 2.0) -> None:
        self.max_wait_s = max_wait_s
        self.horizon_s = horizon_s
        self._batches: deque[tuple[float, float]] = deque(maxlen=window)
        self._arrivals: deque[tuple[float, int]] = deque()

    def arrived(self, items: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._arrivals.append((now, items))
        while self._arrivals and self._arrivals[0][0] < now - self.horizon_s:
            self._arrivals.popleft()

    def finished(self, padded_tokens: int, seconds: float) -> None:
        self._batches.append((float(padded_tokens), seconds))

    def cost_model(self) -> tuple[float, float] | None:
        """``(a, b)``: seconds per padded token and fixed seconds per batch, or None while there is too little
        data (fewer than ``MIN_SAMPLES`` batches, or all the same size)."""
        if len(self._batches) < MIN_SAMPLES:
            return None
        tokens, seconds = np.array(self._batches).T
        if np.ptp(tokens) == 0:
            return None
        a, b = np.polyfit(tokens, seconds, 1)
        return max(float(a), 0.0), max(float(b), 0.0)

    def arrival_rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        recent = sum(count for at, count in self._arrivals if at >= now - self.horizon_s)
        return recent / self.horizon_s

    def wait_s(self, now: float | None = None) -> float:
        """The wait for the next batch: ``min(b, max_wait)`` if an item is expected within ``b``, else 0. Until
        the cost model is known, the configured maximum."""
        model = self.cost_model()
        if model is None:
            return self.max_wait_s
        _, fixed = model
        return min(fixed, self.max_wait_s) if self.arrival_rate(now) * fixed >= 1.0 else 0.0
