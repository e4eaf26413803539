"""Dynamic batching over items, fair across requests, with the work each request brings counted in seconds.

A request with N inputs brings N items. :class:`FairBatcher` forms each batch round-robin over the requests that
are waiting (one item from each in turn, in arrival order), so a burst of small requests is never stuck behind
one big request: each gets a slot in the next batch. A request whose first item has not started within
``queue_timeout_s`` is dropped before any of it runs (its client gets 504); once a request has started, it runs
to the end, so no model work is spent on an answer nobody gets. A client that goes away (its task is cancelled)
has its remaining items dropped.

Admission is by work, not by item count: :class:`WorkMeter` turns a request's estimated tokens (or items, for
tensor models) into seconds at the speed this replica actually runs, and :meth:`FairBatcher.units_ahead` says how
much work would run before a new request is done (under round-robin, a big request ahead of it counts only as
many items as the new one has). So the replica can refuse, before spending anything on it, a request that is
too much work on its own, or one that would wait too long.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelpkg.errors import DeadlineExceededError

# run_batch(items, tags): the batch's items, and the tags of the requests they came from (each request once, in
# batch order; a tag is whatever submit() was given with the request, e.g. its trace span, and None is left out).
RunBatch = Callable[[list[Any], list[Any]], Awaitable[list[Any]]]


class WorkMeter:
    """Seconds of model work, fitted over recent batches as a fixed cost per batch plus a cost per unit (a token for
    text, an item for tensors): ``seconds = overhead_s + units * seconds_per_unit``.

    A proportional estimate (seconds / units of the last batches) reads a run of tiny requests, whose batches are
    nearly all fixed cost, as a model that became many times slower per token, and then refuses an ordinary burst
    as too much work. The fit keeps the two apart. Until the recent batches differ enough in size to separate them
    (``MIN_SPREAD``), the calibrated pair follows how the batches actually ran: the fixed cost alone where they are
    mostly fixed cost (tiny requests say nothing about the cost per token), both in proportion otherwise. One batch
    moves either cost at most ``MAX_STEP`` times: the first batch of a new shape can be many times slower (OpenVINO
    and oneDNN compile kernels per shape)."""

    MAX_STEP = 4.0
    WINDOW = 64  # batches the fit looks back on
    MIN_SPREAD = 2.0  # the largest recent batch must have this many times the units of the smallest to fit both

    def __init__(self, seconds_per_unit: float, overhead_s: float = 0.0) -> None:
        if seconds_per_unit <= 0 or overhead_s < 0:
            raise ValueError(f"need seconds_per_unit > 0 and overhead_s >= 0, got {seconds_per_unit}, {overhead_s}")
        self.seconds_per_unit = seconds_per_unit
        self.overhead_s = overhead_s
        self._calibrated = (overhead_s, seconds_per_unit)
        self._batches: deque[tuple[int, float]] = deque(maxlen=self.WINDOW)

    def record(self, units: int, seconds: float) -> None:
        """Fold one batch (``units`` of work done in ``seconds``) into the estimate."""
        if units <= 0 or seconds <= 0:
            return
        self._batches.append((units, seconds))
        overhead, per_unit = self._fit()
        self.overhead_s = self._bounded(overhead, self.overhead_s) if self.overhead_s else overhead
        self.seconds_per_unit = self._bounded(per_unit, self.seconds_per_unit)

    def _fit(self) -> tuple[float, float]:
        """(overhead_s, seconds_per_unit): by least squares over the window where its batches differ enough in
        size, both kept positive; else from the calibrated pair and how the recent batches ran against it (medians:
        one outlier does not move it): batches mostly fixed cost change the fixed cost by what they took more or
        less; larger ones scale both."""
        units = [u for u, _ in self._batches]
        if len(units) >= 3 and max(units) >= self.MIN_SPREAD * min(units):
            n = len(units)
            mean_u = sum(units) / n
            mean_s = sum(s for _, s in self._batches) / n
            var = sum((u - mean_u) ** 2 for u in units)
            slope = sum((u - mean_u) * (s - mean_s) for u, s in self._batches) / var
            intercept = mean_s - slope * mean_u
            if slope > 0 and intercept >= 0:
                return intercept, slope
        overhead, per_unit = self._calibrated
        typical = sorted(units)[len(units) // 2]
        if overhead >= typical * per_unit:  # small batches, mostly fixed cost: what they add is fixed cost too
            residuals = sorted(s - overhead - u * per_unit for u, s in self._batches)
            return max(overhead + residuals[len(residuals) // 2], overhead / self.MAX_STEP), per_unit
        ratios = sorted(s / (overhead + u * per_unit) for u, s in self._batches)
        ratio = ratios[len(ratios) // 2]
        return overhead * ratio, per_unit * ratio

    def _bounded(self, new: float, current: float) -> float:
        return min(max(new, current / self.MAX_STEP), current * self.MAX_STEP)

    def seconds(self, units: int, batches: int = 1) -> float:
        """The work of ``units`` run in ``batches`` batches (each pays the fixed cost once)."""
        return batches * self.overhead_s + units * self.seconds_per_unit


@dataclass(eq=False)
class _Request:
    items: Sequence[Any]
    units: Sequence[int]
    enqueued: float
    future: asyncio.Future[list[Any]]
    results: list[Any] = field(default_factory=list)
    next: int = 0  # the next item to put in a batch
    left_units: int = 0  # units of the items not yet in a batch
    done: int = 0
    started: float | None = None  # when its first item's batch started
    tag: Any = None  # the caller's, handed to run_batch and on_start with the request's items
    gone: bool = False  # answered (with an error), or its client went away: skip what is left


class FairBatcher:
    """Collects items from concurrent :meth:`submit` calls into batches for ``run_batch``, one batch at a time.

    ``run_batch`` gets a list of items and returns one result per item, in order. ``wait_s`` is asked before each
    batch how long to hold it open for more items (0: run what is there)."""

    def __init__(
        self,
        run_batch: RunBatch,
        max_batch_size: int,
        queue_timeout_s: float,
        wait_s: Callable[[], float] = lambda: 0.0,
        on_start: Callable[[float, Any], None] = lambda waited, tag: None,
    ) -> None:
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.queue_timeout_s = queue_timeout_s
        self.wait_s = wait_s
        self.on_start = on_start  # called with a request's queue wait and tag when its first item starts
        self.pending_units = 0  # admitted and not finished: waiting or running
        self.pending_items = 0
        self._waiting: deque[_Request] = deque()
        self._waiting_items = 0  # items not yet in a batch
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, items: Sequence[Any], units: Sequence[int], tag: Any = None) -> list[Any]:
        """Results for ``items`` in order (``units``: each item's estimated work; ``tag``: given back to
        ``run_batch`` and ``on_start`` with the request). Raises
        :class:`DeadlineExceededError` if none of it started within ``queue_timeout_s``, or what ``run_batch``
        raised for a batch holding one of its items."""
        if not items:
            return []
        request = _Request(items, units, time.monotonic(), asyncio.get_running_loop().create_future(), tag=tag)
        request.results = [None] * len(items)
        request.left_units = sum(units)
        self._waiting.append(request)
        self._waiting_items += len(items)
        self.pending_items += len(items)
        self.pending_units += request.left_units
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())
        try:
            return await request.future
        finally:
            if not request.future.done() or request.future.cancelled():
                self._forget(request)  # the client went away: drop what has not run

    def close(self) -> None:
        """Stop the worker task (call it on the event loop, once nothing is queued): the loop then holds nothing
        of this batcher, and so nothing of the model its ``run_batch`` belongs to."""
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None

    def _forget(self, request: _Request) -> None:
        """Take a request's unscheduled items out of the queue's accounting and mark it gone."""
        if request.gone:
            return
        request.gone = True
        left = len(request.items) - request.next
        self._waiting_items -= left
        self.pending_items -= left
        self.pending_units -= request.left_units
        request.left_units = 0
        request.next = len(request.items)

    def units_ahead(self, items: int) -> int:
        """Units of work that would run before the last of ``items`` new items, batches being formed
        round-robin: of each waiting request, at most as many items as the new one has (at that request's
        average cost per item)."""
        total = 0
        for request in self._waiting:
            left = len(request.items) - request.next
            if request.gone or not left:
                continue
            total += request.left_units if left <= items else request.left_units * items // left
        return total

    def _fail(self, request: _Request, error: BaseException) -> None:
        self._forget(request)
        if not request.future.done():
            request.future.set_exception(error)

    async def _work(self) -> None:
        while True:
            if not self._waiting_items:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._fill()
            batch = self._take()
            if batch:
                await self._run(batch)

    async def _fill(self) -> None:
        """Hold the batch open up to ``wait_s`` while it is not full."""
        wait = self.wait_s()
        if wait <= 0 or self._waiting_items >= self.max_batch_size:
            return
        until = time.monotonic() + wait
        while self._waiting_items < self.max_batch_size and (left := until - time.monotonic()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                return

    def _take(self) -> list[tuple[_Request, int]]:
        """The next batch: one item per waiting request in turn; requests that never started and are past their
        deadline are answered 504 here, before anything of them runs."""
        now = time.monotonic()
        batch: list[tuple[_Request, int]] = []
        while len(batch) < self.max_batch_size and self._waiting:
            request = self._waiting.popleft()
            if request.gone:
                continue
            if request.started is None:
                waited = now - request.enqueued
                if waited > self.queue_timeout_s:
                    error = DeadlineExceededError(f"request waited more than {self.queue_timeout_s} s in the queue")
                    self._fail(request, error)
                    continue
                request.started = now
                self.on_start(waited, request.tag)
            batch.append((request, request.next))
            request.left_units -= request.units[request.next]
            request.next += 1
            self._waiting_items -= 1
            if request.next < len(request.items):
                self._waiting.append(request)  # back of the line: the others get their turn first
        return batch

    async def _run(self, batch: list[tuple[_Request, int]]) -> None:
        units = sum(request.units[index] for request, index in batch)
        try:
            tags = [
                request.tag for request in dict.fromkeys(request for request, _ in batch) if request.tag is not None
            ]
            results = await self.run_batch([request.items[index] for request, index in batch], tags)
        except BaseException as exc:  # the batch's requests get the error; the batcher goes on
            for request, _ in batch:
                self._fail(request, exc if isinstance(exc, Exception) else DeadlineExceededError("replica stopping"))
            if not isinstance(exc, Exception):
                raise  # cancelled: the replica is stopping
            results = None
        finally:
            self.pending_units -= units
            self.pending_items -= len(batch)
        if results is None:
            return
        for (request, index), result in zip(batch, results, strict=True):
            if request.future.done():
                continue
            request.results[index] = result
            request.done += 1
            if request.done == len(request.items):
                request.future.set_result(request.results)
