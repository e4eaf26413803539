"""Day-2 operations on a live server, each under load and counting every failed request: an upgrade to a package
with other outputs and a rollback (real Locust load, and a checker that compares each response's package headers
with the vectors it carries); packages that are refused (a corrupt file, a failing warm-up) while the running one
answers throughout; and a server stopped with SIGTERM while slow requests are in flight.

`optiserve deploy`, `rollback` and `status` run as the command line does, in their own processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.waiting import wait_serving
from loadtests.runner import LoadTestConfig, run_loadtest
from modelpkg.package import ModelPackage, load_package, read_manifest, write_package
from optiserve import exit_codes
from serving.ports import free_port
from serving.replica import package_id
from tests.support.paths import ROOT

pytestmark = [pytest.mark.serve, pytest.mark.timeout(600)]
MINILM = "all-MiniLM-L6-v2"
TEXTS = [f"sentence number {i} about the weather, trains and the price of bread" for i in range(64)]


def optiserve(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "optiserve.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


@pytest.fixture(scope="module")
def tiny_package(tiny_optimized: ModelPackage) -> ModelPackage:
    """A 2-layer, 32-wide BERT package: outputs of another width than MiniLM's 384."""
    return tiny_optimized


@pytest.fixture
def address(server, minilm_packages):
    """The session server's Ray address; it serves MiniLM again afterwards, whatever the test did."""
    import ray

    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        server.deploy(minilm_packages.package.root)


class HeaderCheck:
    """A closed loop of single-sentence requests recording, for each answer, its status, the package its headers
    name and the width of the vector it carries. With ``versions``, KServe requests that ask for each of those
    packages in turn (``/v2/models/{m}/versions/{package}/infer``) instead; ``asked`` records which."""

    def __init__(self, url: str, versions: tuple[str, ...] = ()) -> None:
        self.url = url
        self.versions = versions
        self.answers: list[tuple[int, str | None, int]] = []
        self.asked: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HeaderCheck:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        with httpx.Client(timeout=60) as client:
            i = 0
            while not self._stop.is_set():
                i += 1
                text = TEXTS[i % len(TEXTS)]
                if self.versions:
                    version = self.versions[i % len(self.versions)]
                    self.asked.append(version)
                    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]}
                    url = f"{self.url}/v2/models/{MINILM}/versions/{version}/infer"
                    response = client.post(url, json=body)
                    ok = response.status_code == 200
                    width = response.json()["outputs"][0]["shape"][-1] if ok else 0
                else:
                    response = client.post(f"{self.url}/v1/embeddings", json={"input": text})
                    ok = response.status_code == 200
                    width = len(response.json()["data"][0]["embedding"]) if ok else 0
                self.answers.append((response.status_code, response.headers.get("optiserve-package"), width))


def test_upgrade_and_rollback_under_load_fail_no_request_and_each_answer_names_its_package(
    server, minilm_packages, tiny_package, address, tmp_path, figures
) -> None:
    v1 = package_id(minilm_packages.package.manifest)
    v2 = package_id(tiny_package.manifest)
    widths = {v1: 384, v2: 32}
    events: dict[str, Any] = {}
    results: dict[str, Any] = {}
    config = LoadTestConfig(host=server.url, out_dir=tmp_path, users=4, duration_s=30, max_inputs=4, label="upgrade")
    load = threading.Thread(target=lambda: results.update(summary=run_loadtest(config)), daemon=True)
    replicas_before = {
        (r["replica"], r["pid"])
        for r in json.loads(optiserve("status", "--address", address, "--json").stdout)["replicas"]
    }
    with HeaderCheck(server.url) as check:
        load.start()
        time.sleep(6)
        for event, args in (
            ("upgrade", ["deploy", str(tiny_package.root), "--served-model-name", MINILM]),
            ("rollback", ["rollback"]),
        ):
            before = len(check.answers)
            run = optiserve(*args, "--address", address, "--json")
            assert run.returncode == exit_codes.OK, run.stdout[-2000:] + run.stderr[-3000:]
            outcome = json.loads(run.stdout)
            events[event] = {"seconds": outcome["seconds"], "answers_during": len(check.answers) - before}
            time.sleep(4)
        load.join(timeout=120)
    summary = results["summary"]
    print(f"\nupgrade and rollback under load: {summary.client['requests']:.0f} Locust requests; {events}")
    figures["upgrade_rollback"] = {"locust_requests": summary.client["requests"], "failed": summary.failures, **events}
    assert summary.failures == 0
    assert set(summary.server["requests_by_code"]) == {"200"}
    statuses = {status for status, _, _ in check.answers}
    assert statuses == {200}, statuses
    # Every answer names the package whose vectors it carries, and both packages answered.
    assert all(package in widths and widths[package] == width for _, package, width in check.answers)
    assert {package for _, package, _ in check.answers} == {v1, v2}
    assert check.answers[-1][1] == v1  # rolled back
    status = optiserve("status", "--address", address, "--json")
    state = json.loads(status.stdout)
    assert [p["package"] for p in state["packages"]] == [v1]
    assert all(r["models"][MINILM]["serving"]["package"] == v1 for r in state["replicas"])
    # The same replica processes served throughout: the packages were swapped in place, nothing restarted.
    assert {(r["replica"], r["pid"]) for r in state["replicas"]} == replicas_before


def _with_token_limit(package: Path, into: Path, max_length: int) -> Path:
    """A copy of ``package`` that claims another token limit, written as a valid package (every file hashed)."""
    shutil.copytree(package, into)
    manifest = read_manifest(into)
    assert manifest.tokenizer is not None
    changed = manifest.model_copy(
        update={"tokenizer": manifest.tokenizer.model_copy(update={"max_length": max_length})}
    )
    (into / "manifest.json").unlink()
    return write_package(into, changed).root


def test_broken_packages_are_refused_while_the_running_one_answers(
    server, minilm_packages, tiny_package, address, tmp_path, figures
) -> None:
    corrupt = Path(shutil.copytree(tiny_package.root, tmp_path / "corrupt"))
    model_file = corrupt / tiny_package.manifest.model_path
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))
    # A token limit beyond its position embeddings: it loads, verifies and answers short inputs, and fails on the
    # longest shape it would serve (what a warm-up is for).
    warm_up = _with_token_limit(tiny_package.root, tmp_path / "warm-up", 2048)
    load_package(warm_up)  # it verifies
    v1 = package_id(minilm_packages.package.manifest)
    refused = {}
    with HeaderCheck(server.url) as check:
        for name, package in (("corrupt", corrupt), ("failing_warm_up", warm_up)):
            run = optiserve("deploy", str(package), "--served-model-name", MINILM, "--address", address)
            refused[name] = run.stderr.strip()
            assert run.returncode == exit_codes.ERROR, run.stdout + run.stderr
            assert len(run.stderr.strip().splitlines()) == 1, run.stderr
        time.sleep(1)
    print(f"\nrefused: {refused}; {len(check.answers)} answers meanwhile")
    figures["refused_deploys"] = {"answers_meanwhile": len(check.answers), **refused}
    assert "fails its sha256" in refused["corrupt"]
    assert "did not load and warm up" in refused["failing_warm_up"] and "still serving" in refused["failing_warm_up"]
    assert len(check.answers) > 10
    assert {(status, package) for status, package, _ in check.answers} == {(200, v1)}


def test_canary_that_disagrees_is_rolled_back_and_one_within_limits_is_promoted(
    server, minilm_packages, address, tmp_path, figures
) -> None:
    stable = minilm_packages.package
    baseline = load_package(stable.root.parent / "baseline")  # same source model, re-optimized differently
    disagreeing = _with_token_limit(stable.root, tmp_path / "truncating", 8)  # same source, outputs disagree
    limits = ["--canary-window", "6", "--canary-min-requests", "5", "--address", address, "--json"]
    v1, v2 = package_id(stable.manifest), package_id(baseline.manifest)
    with HeaderCheck(server.url) as check, HeaderCheck(server.url, versions=(v1, v2)) as by_version:
        time.sleep(1)
        rolled_back = optiserve("deploy", str(disagreeing), "--canary", "0.5", *limits)
        promoted = optiserve("deploy", str(baseline.root), "--canary", "0.5", *limits)
        time.sleep(1)
    assert rolled_back.returncode == exit_codes.UNMET, rolled_back.stdout + rolled_back.stderr
    assert "rolled back: agreement: cosine_mean" in rolled_back.stderr
    assert promoted.returncode == exit_codes.OK, promoted.stdout + promoted.stderr
    verdict = json.loads(promoted.stdout)
    print(f"\ncanary: rolled back ({rolled_back.stderr.strip()}); promoted: {verdict}")
    figures["canary"] = {"rolled_back": rolled_back.stderr.strip(), "promoted": verdict}
    assert verdict["outcome"] == "promoted" and verdict["window"]["canary"]["requests"] >= 5
    assert verdict["agreement"]["cosine_mean"] > 0.99
    packages = [package for _, package, _ in check.answers]
    assert {status for status, _, _ in check.answers} == {200}
    assert package_id(baseline.manifest) in packages and packages[-1] == package_id(baseline.manifest)
    # A client asking for a package by its id got that package whenever it was live: both during the canary.
    pairs = zip(by_version.asked, by_version.answers, strict=False)
    answered = [(asked, status, package) for asked, (status, package, _) in pairs]
    assert all(package == asked for asked, status, package in answered if status == 200)
    assert {status for _, status, _ in answered} <= {200, 404}
    assert {asked for asked, status, _ in answered if status == 200} == {v1, v2}
    metrics = httpx.get(f"{server.url}/metrics").text
    assert (
        'outcome="rolled_back",package="' + package_id(read_manifest(disagreeing)) + '",reason="agreement"' in metrics
    )


def _package_answering(url: str) -> str | None:
    """The package named by the answer to one request on a fresh connection."""
    response = httpx.post(f"{url}/v1/embeddings", json={"input": "a b"}, headers={"Connection": "close"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.headers.get("optiserve-package")


def test_a_second_server_answers_with_its_own_package_and_sigterm_drains_it_and_exits_0(
    server, minilm_packages, figures
) -> None:
    """A server of its own (`optiserve serve`, its own Ray: the unoptimized baseline package, one single-thread
    replica, so requests stay in flight for a while), found by `--address auto`.

    Beside the session server, it answers with its own package and the session server with its own: replicas bind
    their ports with SO_REUSEPORT, and two servers on one port range once answered with each other's models. The
    session server is asked once (requests of a few tokens while the other starts on the same 2 cores would make
    its replica measure itself slow and refuse a following burst).

    Then it is stopped with SIGTERM while three requests are being computed: they are answered, readiness turns
    503 before the port closes, and it exits 0 saying why."""
    baseline = load_package(minilm_packages.package.root.parent / "baseline")
    port = free_port()
    env = {**os.environ, "OPTISERVE_DRAIN_GRACE_S": "1"}
    serve = subprocess.Popen(
        [sys.executable, "-m", "optiserve.cli", "serve", str(baseline.root), "--port", str(port),
         "--replicas", "1", "--threads", "1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    answers: list[int] = []
    refusals: list[str] = []
    readiness: list[int] = []
    try:
        deadline = time.monotonic() + 240
        status = optiserve("status", "--address", "auto")
        while status.returncode != 0 and time.monotonic() < deadline:  # until the server recorded where it runs
            assert serve.poll() is None, serve.stdout.read() if serve.stdout else ""
            time.sleep(2)
            status = optiserve("status", "--address", "auto")
        assert package_id(baseline.manifest) in status.stdout, status.stdout + status.stderr
        wait_serving(url, deadline - time.monotonic())
        own = [_package_answering(url) for _ in range(8)]
        assert own == [package_id(baseline.manifest)] * 8
        assert _package_answering(server.url) == package_id(minilm_packages.package.manifest)
        long_text = " ".join(TEXTS[:6])

        def slow_request(offset: int) -> None:
            # distinct texts, so each is computed; 16 keep the work queued ahead under the admission limit (24 were
            # refused once, 503, on a 2-core machine busy with other work)
            body = {"input": [f"{offset + i} {long_text}" for i in range(16)]}
            response = httpx.post(f"{url}/v1/embeddings", json=body, timeout=120)
            answers.append(response.status_code)
            if response.status_code != 200:
                refusals.append(response.text)

        def watch_readiness() -> None:
            while not readiness or readiness[-1] == 200:
                try:
                    readiness.append(httpx.get(f"{url}/v2/health/ready", timeout=5).status_code)
                except httpx.HTTPError:
                    readiness.append(0)
                time.sleep(0.05)

        clients = [threading.Thread(target=slow_request, args=(100 * n,)) for n in range(3)]
        for client in clients:
            client.start()
            time.sleep(0.1)
        watcher = threading.Thread(target=watch_readiness)
        watcher.start()
        serve.send_signal(signal.SIGTERM)
        terminated = time.monotonic()
        for thread in [*clients, watcher]:
            thread.join(timeout=120)
        output, _ = serve.communicate(timeout=120)
        code, stopped_s = serve.returncode, time.monotonic() - terminated
    finally:
        if serve.poll() is None:
            serve.kill()
    print(f"\nSIGTERM: answers {answers}, readiness {readiness[-1]}, exit {code} after {stopped_s:.1f} s")
    figures["sigterm_drain"] = {"answers": answers, "not_ready_answer": readiness[-1], "stopped_s": stopped_s}
    assert answers == [200] * 3, refusals
    assert readiness[-1] == 503  # not ready while still answering, before the port closes
    assert code == 0, output[-3000:]
    assert "received SIGTERM; shutting down" in output
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # the port is closed
