"""Faults under load on a live server: a killed replica, live reconfiguration and rolling replacement."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import httpx
import psutil
import pytest

from corpus import load_split
from serving.replica import ModelRunner
from tests.support.load import ClosedLoopLoad

pytestmark = pytest.mark.serve
REPLICA_TITLE = "ServeReplica:optiserve:InferenceService"
TEXTS = load_split("heldout")[:200]
NOTICE_WINDOW_S = 3.0  # time Ray may take to stop routing to a dead replica


def _replica_pids() -> list[int]:
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if any(REPLICA_TITLE in part for part in proc.info["cmdline"] or []):
            pids.append(proc.info["pid"])
    return pids


def _wait_until(predicate, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("condition not met in time")


def test_killed_replica_is_replaced_and_only_in_flight_requests_fail(server, figures) -> None:
    (victim,) = _replica_pids()
    with ClosedLoopLoad(server.url, TEXTS, workers=6) as load:
        time.sleep(3)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        _wait_until(lambda: [p for p in _replica_pids() if p != victim])
        _wait_until(lambda: httpx.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 200)
        recovered_at = time.monotonic()
        time.sleep(3)
    in_flight = load.in_flight_at(killed_at)
    failures = load.failures()
    print(
        f"\nreplica kill: {len(load.outcomes)} requests, {len(failures)} failed, {in_flight} in flight at the kill, "
        f"replaced in {recovered_at - killed_at:.1f} s"
    )
    figures["replica_kill"] = {
        "requests": len(load.outcomes),
        "failed": len(failures),
        "in_flight_at_kill": in_flight,
        "replaced_after_s": round(recovered_at - killed_at, 1),
        "workers": 6,
    }
    # Only requests the dead replica held fail: in flight at the kill, or routed to it in the moments before Ray
    # noticed. Nothing that finished before the kill, or was sent well after it, is lost.
    assert all(o.finished >= killed_at and o.started <= killed_at + NOTICE_WINDOW_S for o in failures)
    assert any(o.status == 200 and o.started > recovered_at for o in load.outcomes)


def test_config_changes_under_load_fail_no_request(server, minilm_packages, figures) -> None:
    package = minilm_packages.package.root
    try:
        with ClosedLoopLoad(server.url, TEXTS, workers=6) as load:
            time.sleep(2)
            server.deploy(package, {"max_batch_size": 8})  # user_config only: reconfigure() in place
            time.sleep(2)
            server.deploy(package, env={"OPTISERVE_MAX_INPUTS": "1000"})  # new replica; the old one drains
            time.sleep(2)
    finally:
        server.deploy(package)
    print(f"\nconfig changes under load: {len(load.outcomes)} requests, {len(load.failures())} failed")
    figures["config_changes"] = {"requests": len(load.outcomes), "failed": len(load.failures()), "workers": 6}
    assert len(load.outcomes) > 20
    assert load.failures() == []


def test_check_health_fails_when_the_runtime_breaks(minilm_packages) -> None:
    async def scenario() -> None:
        replica = ModelRunner(str(minilm_packages.package.root), threads=1)
        await replica.check_health()  # healthy

        def broken(*_: object) -> None:
            raise RuntimeError("runtime lost its session")

        replica.pipeline.runtime.run = broken  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="lost its session"):
            await replica.check_health()

    asyncio.run(scenario())


def test_a_model_call_that_hangs_makes_the_replica_unready_and_unhealthy(minilm_packages) -> None:
    """A model thread stuck in a call: readiness (ServedModels.stalled) and Ray's health check say so at once, so
    health never stays green over a dead model; the request finishes if the call ever returns."""

    async def scenario() -> None:
        runner = ModelRunner(str(minilm_packages.package.root), threads=1)
        runner.apply({"max_request_s": 0.05})  # stuck after STALL_FACTOR x 0.05 s
        release = threading.Event()
        real = runner.pipeline.runtime.run

        def hang(*args: object, **kwargs: object) -> object:
            release.wait(30)
            return real(*args, **kwargs)

        runner.pipeline.runtime.run = hang  # type: ignore[method-assign]
        request = asyncio.create_task(runner.infer(["a sentence"]))
        await asyncio.sleep(0.5)
        assert "a model call has run" in (runner.stalled() or "")
        with pytest.raises(RuntimeError, match="a model call has run"):
            await asyncio.wait_for(runner.check_health(), 5)
        release.set()
        assert (await request).outputs.shape[0] == 1
        assert runner.stalled() is None

    asyncio.run(scenario())
