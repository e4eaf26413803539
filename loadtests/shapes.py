"""Locust load shapes, configured by environment variables so each works from the command line:

    locust -f loadtests/embeddings.py,loadtests/shape_step.py --host URL --headless     # or with the web UI

- ``StepShape``  ``OPTISERVE_STAGES="1:10,2:10,4:10"``: users:seconds per stage, in order.
- ``RampShape``  ``OPTISERVE_RAMP="1:16:60"``: from users, to users, over seconds (linear).
- ``SpikeShape`` ``OPTISERVE_SPIKE="2:16:20:10:20"``: base users, spike users, seconds before, during, after.
- ``SweepShape`` ``OPTISERVE_SWEEP_USERS="1,2,4,8"``: steps through user counts, holding each until throughput is
  stable (``OPTISERVE_SWEEP_STABLE_WINDOWS`` consecutive windows of ``OPTISERVE_SWEEP_WINDOW_S`` within
  ``OPTISERVE_SWEEP_TOLERANCE``) or ``OPTISERVE_SWEEP_MAX_STEP_S`` passed, and writes each step's throughput and
  latency (client side, and server side from ``/metrics`` when the server is optiserve and
  ``OPTISERVE_SWEEP_SERVER_METRICS`` is 1) to
  ``OPTISERVE_SWEEP_OUT`` (JSON). ``optiserve loadtest --sweep`` runs it and finds the knee.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from locust import LoadTestShape

from loadtests import settings
from loadtests.stats import percentile
from modelpkg.settings import Setting

SPAWN_RATE = 100.0  # users started per second: stages change at once


def _numbers(setting: Setting[str]) -> list[float]:
    raw = setting.get()
    try:
        return [float(part) for part in raw.replace(",", ":").split(":") if part.strip()]
    except ValueError:
        raise ValueError(f"{setting.name}={raw!r} must be numbers separated by ':' or ','") from None


def step_stages() -> list[tuple[int, float]]:
    numbers = _numbers(settings.STAGES)
    if len(numbers) % 2 or not numbers:
        raise ValueError("OPTISERVE_STAGES must be users:seconds pairs, e.g. 1:10,2:10")
    return [(int(numbers[i]), numbers[i + 1]) for i in range(0, len(numbers), 2)]


class StepShape(LoadTestShape):
    """Stages of fixed user counts, one after the other; stops after the last."""

    def __init__(self) -> None:
        super().__init__()
        self.stages = self.configured_stages()

    def configured_stages(self) -> list[tuple[int, float]]:
        return step_stages()

    def tick(self) -> tuple[int, float] | None:
        elapsed = self.get_run_time()
        for users, seconds in self.stages:
            if elapsed < seconds:
                return users, SPAWN_RATE
            elapsed -= seconds
        return None


class RampShape(LoadTestShape):
    """Users grow linearly from a start to an end count over a duration; stops at the end."""

    def __init__(self) -> None:
        super().__init__()
        start, end, self.seconds = _numbers(settings.RAMP)
        self.start, self.end = int(start), int(end)

    def tick(self) -> tuple[int, float] | None:
        elapsed = self.get_run_time()
        if elapsed >= self.seconds:
            return None
        return max(1, round(self.start + (self.end - self.start) * elapsed / self.seconds)), SPAWN_RATE


class SpikeShape(StepShape):
    """A base load, a sudden spike, then the base load again (three stages); stops after."""

    def configured_stages(self) -> list[tuple[int, float]]:
        base, spike, before, during, after = _numbers(settings.SPIKE)
        return [(int(base), before), (int(spike), during), (int(base), after)]


@dataclass
class SweepStep:
    users: int
    rps: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    server_p50_ms: float | None = None
    server_p99_ms: float | None = None
    failures: int = 0
    requests: int = 0
    stable: bool = False
    seconds: float = 0.0
    window_rps: list[float] = field(default_factory=list)


@dataclass
class _Snapshot:
    at: float
    requests: int
    failures: int
    response_times: dict[int, int]
    server: dict | None


class SweepShape(LoadTestShape):
    """Goodput sweep: each user count is held until its throughput is stable, then measured over the stable
    windows (client percentiles from Locust's response-time buckets, server percentiles from ``/metrics``)."""

    def __init__(self) -> None:
        super().__init__()
        self.levels = [int(u) for u in _numbers(settings.SWEEP_USERS)]
        self.window_s = settings.SWEEP_WINDOW_S.get()
        self.stable_windows = settings.SWEEP_STABLE_WINDOWS.get()
        self.tolerance = settings.SWEEP_TOLERANCE.get()
        self.max_step_s = settings.SWEEP_MAX_STEP_S.get()
        self.out = Path(settings.SWEEP_OUT.get())
        self.steps: list[SweepStep] = []
        self.snapshots: list[_Snapshot] = []
        self.level = 0
        self.step_started = 0.0

    def _snapshot(self) -> _Snapshot:
        assert self.runner is not None  # Locust sets it before it asks the shape for a tick
        total = self.runner.stats.total
        return _Snapshot(
            self.get_run_time(), total.num_requests, total.num_failures, dict(total.response_times), self._scrape()
        )

    def _scrape(self) -> dict | None:
        host = getattr(getattr(self.runner, "environment", None), "host", None)
        if not host or not settings.SWEEP_SERVER_METRICS.get():
            return None
        from loadtests.scrape import scrape

        try:
            return scrape(host.rstrip("/") + "/metrics", timeout_s=5)
        except (OSError, ValueError, urllib.error.URLError):
            return None

    def tick(self) -> tuple[int, float] | None:
        if self.level >= len(self.levels):
            return None
        now = self.get_run_time()
        if not self.snapshots:
            self.snapshots.append(self._snapshot())
            self.step_started = now
        elif now - self.snapshots[-1].at >= self.window_s:
            self.snapshots.append(self._snapshot())
            if self._step_done(now):
                self.level += 1
                self.snapshots = [self.snapshots[-1]]
                self.step_started = now
                self._write()
                if self.level >= len(self.levels):
                    return None
        return self.levels[self.level], SPAWN_RATE

    def _window_rps(self) -> list[float]:
        pairs = zip(self.snapshots, self.snapshots[1:], strict=False)
        return [(b.requests - a.requests) / max(b.at - a.at, 1e-9) for a, b in pairs]

    def _step_done(self, now: float) -> bool:
        # The first window of a step is warm-up (users starting, queues filling): never part of the measurement.
        rates = self._window_rps()[1:]
        recent = rates[-self.stable_windows :]
        stable = (
            len(recent) == self.stable_windows
            and min(recent) > 0
            and ((max(recent) - min(recent)) / max(recent) <= self.tolerance)
        )
        if not stable and now - self.step_started < self.max_step_s:
            return False
        first = self.snapshots[-1 - min(len(recent), self.stable_windows)]
        self.steps.append(self._measure(first, self.snapshots[-1], stable, rates, now))
        return True

    def _measure(self, first: _Snapshot, last: _Snapshot, stable: bool, rates: list[float], now: float) -> SweepStep:
        from loadtests.scrape import histogram_delta

        times = {ms: n - first.response_times.get(ms, 0) for ms, n in last.response_times.items()}
        step = SweepStep(
            users=self.levels[self.level],
            rps=(last.requests - first.requests) / max(last.at - first.at, 1e-9),
            p50_ms=percentile(times, 0.5),
            p99_ms=percentile(times, 0.99),
            failures=last.failures - first.failures,
            requests=last.requests - first.requests,
            stable=stable,
            seconds=now - self.step_started,
            window_rps=rates,
        )
        if first.server is not None and last.server is not None:
            latency = histogram_delta(first.server, last.server, "optiserve_request_duration_seconds")
            if latency.count:
                step.server_p50_ms = latency.quantile(0.5) * 1e3
                step.server_p99_ms = latency.quantile(0.99) * 1e3
        return step

    def _write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps([asdict(s) for s in self.steps], indent=2) + "\n")
