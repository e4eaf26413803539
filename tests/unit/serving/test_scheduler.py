"""The fair batcher and the work meter (serving/scheduler.py), driven by a real event loop and a fake model: a
coroutine that records each batch it is given."""

from __future__ import annotations

import asyncio

import pytest

from modelpkg.errors import DeadlineExceededError
from serving.scheduler import FairBatcher, WorkMeter


class RecordingModel:
    """Answers each item with itself, after ``delay`` seconds per batch; remembers every batch."""

    def __init__(self, delay: float = 0.0, fail_on: object = None) -> None:
        self.batches: list[list[object]] = []
        self.tags: list[list[object]] = []
        self.delay = delay
        self.fail_on = fail_on

    async def __call__(self, items: list[object], tags: list[object] = ()) -> list[object]:
        self.batches.append(list(items))
        self.tags.append(list(tags))
        await asyncio.sleep(self.delay)
        if self.fail_on in items:
            raise RuntimeError("model failed")
        return [f"out:{item}" for item in items]


def test_results_come_back_in_order_and_the_accounting_returns_to_zero() -> None:
    async def scenario() -> None:
        model = RecordingModel()
        batcher = FairBatcher(model, max_batch_size=4, queue_timeout_s=10.0)
        results = await asyncio.gather(batcher.submit(list(range(10)), [1] * 10), batcher.submit(["a", "b"], [5, 5]))
        assert results == [[f"out:{i}" for i in range(10)], ["out:a", "out:b"]]
        assert all(len(batch) <= 4 for batch in model.batches)
        assert (batcher.pending_items, batcher.pending_units) == (0, 0)

    asyncio.run(scenario())


def test_each_batch_is_given_the_tags_of_the_requests_in_it_once() -> None:
    """What tracing hangs on: a batch span links to the request spans (the tags) whose items it ran."""

    async def scenario() -> None:
        model = RecordingModel()
        started: list[object] = []
        batcher = FairBatcher(
            model, max_batch_size=4, queue_timeout_s=10.0, on_start=lambda _, tag: started.append(tag)
        )
        await asyncio.gather(
            batcher.submit(["a1", "a2", "a3"], [1] * 3, tag="A"), batcher.submit(["b1"], [1], tag="B"),
            batcher.submit(["c1"], [1]),
        )  # fmt: skip
        assert model.batches == [["a1", "b1", "c1", "a2"], ["a3"]]
        assert model.tags == [["A", "B"], ["A"]]
        assert started == ["A", "B", None]

    asyncio.run(scenario())


def test_small_requests_are_not_stuck_behind_a_big_one() -> None:
    async def scenario() -> None:
        model = RecordingModel(delay=0.001)
        batcher = FairBatcher(model, max_batch_size=8, queue_timeout_s=10.0)
        big = asyncio.ensure_future(batcher.submit([f"big{i}" for i in range(200)], [1] * 200))
        await asyncio.sleep(0)  # the big request is queued first
        small = [asyncio.ensure_future(batcher.submit([f"small{i}"], [1])) for i in range(7)]
        await asyncio.gather(big, *small)
        # Every small request ran in one of the first two batches, not after the 200 big items (25 batches).
        served_by = {item: n for n, batch in enumerate(model.batches) for item in batch}
        assert max(served_by[f"small{i}"] for i in range(7)) <= 1
        assert len(model.batches) >= 200 // 8

    asyncio.run(scenario())


def test_a_request_that_never_started_within_its_deadline_is_dropped_unrun() -> None:
    async def scenario() -> None:
        model = RecordingModel(delay=0.05)
        batcher = FairBatcher(model, max_batch_size=1, queue_timeout_s=0.02)
        first = asyncio.ensure_future(batcher.submit(["first"], [1]))
        await asyncio.sleep(0)
        late = asyncio.ensure_future(batcher.submit(["late"], [1]))
        assert await first == ["out:first"]
        with pytest.raises(DeadlineExceededError):
            await late
        assert ["late"] not in model.batches
        assert (batcher.pending_items, batcher.pending_units) == (0, 0)

    asyncio.run(scenario())


def test_a_started_request_runs_to_its_end_past_the_deadline() -> None:
    async def scenario() -> None:
        model = RecordingModel(delay=0.01)
        batcher = FairBatcher(model, max_batch_size=1, queue_timeout_s=0.005)
        assert await batcher.submit(["a", "b", "c"], [1, 1, 1]) == ["out:a", "out:b", "out:c"]

    asyncio.run(scenario())


def test_a_cancelled_request_s_remaining_items_are_never_computed() -> None:
    async def scenario() -> None:
        model = RecordingModel(delay=0.05)
        batcher = FairBatcher(model, max_batch_size=2, queue_timeout_s=10.0)
        gone = asyncio.ensure_future(batcher.submit([f"x{i}" for i in range(20)], [3] * 20))
        await asyncio.sleep(0.015)  # one or two batches ran
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        after = await batcher.submit(["next"], [1])
        assert after == ["out:next"]
        computed = [item for batch in model.batches for item in batch]
        assert len(computed) < 20 and computed[-1] == "next"
        assert (batcher.pending_items, batcher.pending_units) == (0, 0)

    asyncio.run(scenario())


def test_a_failed_batch_fails_its_requests_and_the_batcher_goes_on() -> None:
    async def scenario() -> None:
        model = RecordingModel(fail_on="bad")
        batcher = FairBatcher(model, max_batch_size=8, queue_timeout_s=10.0)
        with pytest.raises(RuntimeError, match="model failed"):
            await batcher.submit(["ok", "bad"], [1, 1])
        assert await batcher.submit(["fine"], [1]) == ["out:fine"]
        assert (batcher.pending_items, batcher.pending_units) == (0, 0)

    asyncio.run(scenario())


def test_the_batch_waits_to_fill_only_as_long_as_asked() -> None:
    async def scenario() -> None:
        model = RecordingModel()
        batcher = FairBatcher(model, max_batch_size=4, queue_timeout_s=10.0, wait_s=lambda: 0.3)
        first = asyncio.ensure_future(batcher.submit(["a"], [1]))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(batcher.submit(["b"], [1]))
        await asyncio.gather(first, second)
        assert model.batches == [["a", "b"]]  # held open for the second arrival

    asyncio.run(scenario())


def test_the_work_meter_follows_what_batches_cost() -> None:
    meter = WorkMeter(seconds_per_unit=1e-3)
    assert meter.seconds(100) == pytest.approx(0.1)
    for _ in range(20):
        meter.record(units=100, seconds=1.0)  # ten times slower than calibrated
    assert meter.seconds(100) == pytest.approx(1.0, rel=1e-3)
    meter.record(units=0, seconds=5.0)  # nothing to learn from
    meter.record(units=100, seconds=1000.0)  # one batch that compiled its kernels: the median ignores it
    assert meter.seconds(100) == pytest.approx(1.0, rel=1e-3)
    with pytest.raises(ValueError):
        WorkMeter(0.0)


def test_a_run_of_tiny_requests_does_not_make_an_ordinary_burst_look_like_more_work() -> None:
    """The sequence that 503'd an ordinary burst: many requests of a few tokens (batches that are nearly all fixed
    cost), then 96 sentences. A model of 5 ms per call plus 20 us per token, calibrated 20% off."""

    def cost(units: int) -> float:
        return 0.005 + 2e-5 * units

    meter = WorkMeter(seconds_per_unit=1.2 * 2e-5, overhead_s=0.8 * 0.005)
    for units in [3, 4, 3, 5, 4, 3] * 10:  # "a", "b c", ...
        meter.record(units, cost(units))
    burst = 96 * 40
    truth = 3 * 0.005 + burst * 2e-5  # 96 sentences of 40 tokens, in 3 batches
    estimate = meter.seconds(burst, batches=3)  # a model estimate from the numbers above, not a measured time
    assert 0.7 * truth < estimate < 1.5 * truth  # off by the calibration's error at most
    proportional = cost(4) / 4 * burst  # what seconds/units of those batches predicted
    assert proportional > 10 * estimate
    for units in [3, 40, 400, 1200] * 5:  # mixed sizes: the fit separates the two costs
        meter.record(units, cost(units))
    assert meter.overhead_s == pytest.approx(0.005, rel=0.05)
    assert meter.seconds_per_unit == pytest.approx(2e-5, rel=0.05)


def test_work_ahead_of_a_new_request_counts_a_big_request_only_item_for_item() -> None:
    async def scenario() -> None:
        gate = asyncio.Event()

        async def held(items: list[object], tags: list[object]) -> list[object]:
            await gate.wait()
            return list(items)

        batcher = FairBatcher(held, max_batch_size=1, queue_timeout_s=10.0)
        big = asyncio.ensure_future(batcher.submit(list(range(101)), [10] * 101))
        small = asyncio.ensure_future(batcher.submit(["a", "b"], [3, 3]))
        await asyncio.sleep(0.01)  # item 0 of the big request is running; 100 of its items and 2 small ones wait
        assert batcher.units_ahead(1) == 10 + 3
        assert batcher.units_ahead(2) == 20 + 6
        assert batcher.units_ahead(1000) == 1000 + 6
        assert batcher.pending_units == 1010 + 6
        gate.set()
        await asyncio.gather(big, small)
        assert (batcher.units_ahead(1), batcher.pending_units) == (0, 0)

    asyncio.run(scenario())


def test_a_replica_that_starts_during_a_stall_calibrates_from_its_fastest_calls(tiny_optimized, monkeypatch) -> None:
    """A machine stall (here: one probe call held 1 s) while a replica calibrates must not become its speed, or it
    would refuse ordinary requests as too much work (seen beside a canary's teardown: 413 for 16 sentences)."""
    import time

    from serving import replica

    def runner(stall: bool) -> replica.ModelRunner:
        load = replica.load_pipeline

        def stalling_pipeline(*args, **kwargs):
            pipeline = load(*args, **kwargs)
            run, stalled = pipeline.run, [not stall]

            def run_once_stalled(items, *a, **kw):
                if len(items) == replica.CALIBRATION_ITEMS and not stalled[0]:
                    stalled[0] = True
                    time.sleep(1.0)
                return run(items, *a, **kw)

            pipeline.run = run_once_stalled
            return pipeline

        monkeypatch.setattr(replica, "load_pipeline", stalling_pipeline)
        return replica.ModelRunner(str(tiny_optimized.root), threads=1)

    steady_runner = runner(stall=False)
    steady, stalled = steady_runner.work, runner(stall=True).work
    assert stalled.seconds_per_unit < 10 * steady.seconds_per_unit, (stalled.seconds_per_unit, steady.seconds_per_unit)
    assert stalled.seconds(100) < 0.5  # the stalled second is in no estimate
    # The calibrated cost of a model call, in tokens, is what the pipeline cuts batches by (plan_chunks).
    cost = steady_runner.pipeline.call_cost_tokens
    assert cost is not None and cost >= 1.0
    assert cost == pytest.approx(max(steady.overhead_s / steady.seconds_per_unit, 1.0))


def test_one_word_requests_do_not_teach_a_sentence_ten_times_its_tokens(tiny_optimized) -> None:
    """The token estimate learns tokens per character from what it tokenizes; the special tokens every text gets
    ("a" is [CLS] a [SEP]) are not part of it, or a run of one-word requests (seen on a slower CPU: 60 of them, then
    96 sentences refused as 2 s of work that ran in 0.3 s) would make an ordinary sentence look ten times longer."""
    from serving.replica import ModelRunner

    runner = ModelRunner(str(tiny_optimized.root), threads=1)
    sentence = "The quick brown fox jumps over the lazy dog near the quiet river bank."
    assert runner.pipeline.encoder is not None
    tokens = len(runner.pipeline.encoder.encode([sentence])[0].ids)

    async def tiny_requests() -> None:
        for text in ["a", "b c"] * 30:
            await runner.infer([text], cache="bypass")

    asyncio.run(tiny_requests())
    (estimate,) = runner.units([sentence])
    assert estimate < 4 * tokens, (estimate, tokens)  # one-letter words are about a token per character
