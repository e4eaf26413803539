"""A short, bounded, real Locust run against the live server, and the metric arithmetic behind the summary."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.responses import JSONResponse

from loadtests.flags import REQUEST_FLAGS
from loadtests.runner import LoadTestConfig, final_stats, run_loadtest
from loadtests.scrape import HistogramDelta, histogram_delta
from optiserve import exit_codes
from tests.support.paths import ROOT


@pytest.mark.serve
def test_short_locust_run_has_no_failures_and_reports_server_batches(server, tmp_path: Path) -> None:
    summary = run_loadtest(
        LoadTestConfig(host=server.url, out_dir=tmp_path, users=6, duration_s=6, max_inputs=4, label="smoke")
    )
    assert summary.client["requests"] > 10
    assert summary.failures == 0
    # Nothing lost: every request Locust counted reached the server and got a 200 (the server may count a few more:
    # requests in flight when Locust stops are answered but not recorded by Locust).
    assert set(summary.server["requests_by_code"]) == {"200"}
    # Locust's final numbers (--json-file, written at exit): the server counts at most one more per user.
    assert 0 <= summary.server["requests_by_code"]["200"] - summary.client["requests"] <= 6
    assert summary.server["items"] >= summary.client["requests"]  # 1..4 inputs per request
    assert summary.server["batches"] > 0
    written = json.loads((tmp_path / "smoke.json").read_text())
    assert written["client"]["failures"] == 0
    assert (tmp_path / "smoke.md").read_text().startswith("# Load test: smoke")
    assert (tmp_path / "smoke_locust_stats.csv").exists()


def test_histogram_quantiles_interpolate_like_prometheus() -> None:
    key = "h"
    before = {(f"{key}_bucket", (("le", b),)): 0.0 for b in ("1.0", "2.0", "4.0", "+Inf")}
    after = {
        (f"{key}_bucket", (("le", "1.0"),)): 10.0,
        (f"{key}_bucket", (("le", "2.0"),)): 30.0,
        (f"{key}_bucket", (("le", "4.0"),)): 40.0,
        (f"{key}_bucket", (("le", "+Inf"),)): 40.0,
        (f"{key}_count", ()): 40.0,
        (f"{key}_sum", ()): 70.0,
    }
    delta: HistogramDelta = histogram_delta(before, after, key)
    assert delta.count == 40 and delta.mean == pytest.approx(1.75)
    assert delta.quantile(0.5) == pytest.approx(1.5)  # rank 20 lies halfway through the (1, 2] bucket
    assert delta.quantile(0.25) == pytest.approx(1.0)
    assert delta.distribution() == [("<= 1", 10.0), ("<= 2", 20.0), ("<= 4", 10.0)]


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "optiserve.cli", *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )


@pytest.mark.serve
def test_kserve_load_writes_reports_that_parse_including_png_plots(server, tmp_path: Path) -> None:
    from PIL import Image

    summary = run_loadtest(
        LoadTestConfig(host=server.url, out_dir=tmp_path, users=4, duration_s=5, max_inputs=3, api="kserve", label="k")
    )
    assert summary.failures == 0 and summary.client["requests"] > 5
    assert summary.server["requests_by_code"].get("200", 0) >= summary.client["requests"]
    written = json.loads((tmp_path / "k.json").read_text())
    assert written["api"] == "kserve" and written["client_processes"] == 1
    pngs = [Path(f) for f in summary.files if f.endswith(".png")]
    assert {p.name for p in pngs} == {"k_timeseries.png", "k_batch_sizes.png"}
    for png in pngs:
        with Image.open(png) as image:
            assert image.format == "PNG" and image.size[0] > 100
    markdown = (tmp_path / "k.md").read_text()
    assert "![k_timeseries.png](k_timeseries.png)" in markdown


@pytest.mark.serve
def test_unreachable_slo_exits_non_zero(server, tmp_path: Path) -> None:
    run = _run_cli(
        "loadtest", "--host", server.url, "--users", "2", "--duration", "3", "--slo-p99-ms", "0.001", "--no-plots",
        "--out", str(tmp_path), "--label", "slo",
    )  # fmt: skip
    assert run.returncode == exit_codes.UNMET, run.stdout + run.stderr
    assert "SLO broken" in run.stdout
    summary = json.loads((tmp_path / "slo.json").read_text())
    assert summary["slo"]["violations"] and summary["client"]["failures"] == 0
    held = _run_cli(
        "loadtest", "--host", server.url, "--users", "2", "--duration", "3", "--slo-p99-ms", "60000",
        "--max-error-rate", "0", "--no-plots", "--out", str(tmp_path), "--label", "held",
    )  # fmt: skip
    assert held.returncode == 0, held.stdout + held.stderr
    compared = _run_cli("compare", str(tmp_path / "slo.json"), str(tmp_path / "held.json"))
    assert compared.returncode == 0 and "| req/s (client) |" in compared.stdout


@pytest.mark.serve
def test_step_shape_runs_the_user_counts_of_each_stage(server, tmp_path: Path) -> None:
    stages = [(1, 4), (4, 4), (2, 4)]
    summary = run_loadtest(
        LoadTestConfig(
            host=server.url,
            out_dir=tmp_path,
            duration_s=60,  # an upper bound: the shape stops after its last stage
            shape="step",
            env={"OPTISERVE_STAGES": ",".join(f"{u}:{s}" for u, s in stages)},
            plots=False,
            label="step",
        )
    )
    assert summary.failures == 0
    with (tmp_path / "step_locust_stats_history.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["Name"] == "Aggregated"]
    start = float(rows[0]["Timestamp"])
    observed: dict[int, set[int]] = {0: set(), 1: set(), 2: set()}
    for row in rows:
        t = float(row["Timestamp"]) - start
        stage = min(int(t // 4), 2)
        if t % 4 >= 1.5:  # away from the stage boundaries (history rows are once a second)
            observed[stage].add(int(row["User Count"]))
    assert observed == {0: {1}, 1: {4}, 2: {2}}
    assert {int(r["User Count"]) for r in rows[-2:]} <= {2, 0}  # the run ended after the last stage


@pytest.mark.serve
def test_target_rate_paces_users_and_distributed_locust_reports_its_workers(server, tmp_path: Path) -> None:
    summary = run_loadtest(
        LoadTestConfig(
            host=server.url, out_dir=tmp_path, users=4, duration_s=8, rate=10, workers=2, plots=False, label="rate"
        )
    )
    assert summary.failures == 0 and summary.client_processes == 2
    assert 6 <= summary.client["rps"] <= 14  # paced at 10 req/s over all users, not a closed loop (~80 req/s here)
    assert (tmp_path / "rate_locust-worker1.log").exists()


@pytest.fixture(scope="module")
def tiny_served(server, tiny_optimized, minilm_packages):
    package = tiny_optimized  # the sweep needs a small fast model
    server.deploy(package.root)
    try:
        yield server
    finally:
        server.deploy(minilm_packages.package.root)


@pytest.mark.serve
def test_sweep_finds_a_knee_on_a_tiny_model_in_bounded_time(tiny_served, tmp_path: Path) -> None:
    from loadtests.sweep import run_sweep

    levels = [1, 2, 4, 8]
    result = run_sweep(
        LoadTestConfig(host=tiny_served.url, out_dir=tmp_path, plots=False, label="sweep"),
        levels,
        slo_p99_ms=10_000,
        window_s=1.0,
        max_step_s=8.0,
    )
    assert [s["users"] for s in result["steps"]] == levels
    # bounded: every step ended by stability or at its cap (the shape's own accounting, not the wall clock)
    assert all(s["stable"] or s["seconds"] >= 8.0 for s in result["steps"])
    assert result["knee"] is not None and result["goodput_rps"] > 0
    assert result["goodput_rps"] == max(s["rps"] for s in result["steps"] if s["p99_ms"] <= 10_000)
    assert all(s["server_p99_ms"] is not None for s in result["steps"])  # server side read from /metrics
    assert (tmp_path / "sweep_sweep.png").stat().st_size > 1000
    assert "Knee" in (tmp_path / "sweep_sweep.md").read_text()


def test_knee_is_the_best_throughput_within_the_slo_or_the_power_point() -> None:
    from loadtests.runner import goodput_rps
    from loadtests.sweep import find_knee

    steps = [
        {"users": 1, "rps": 50.0, "p50_ms": 18.0, "p99_ms": 25.0, "failures": 0},
        {"users": 2, "rps": 90.0, "p50_ms": 20.0, "p99_ms": 30.0, "failures": 0},
        {"users": 4, "rps": 100.0, "p50_ms": 38.0, "p99_ms": 60.0, "failures": 0},
        {"users": 8, "rps": 101.0, "p50_ms": 75.0, "p99_ms": 120.0, "failures": 3},
    ]
    assert find_knee(steps, slo_p99_ms=70) == 2
    assert find_knee(steps, slo_p99_ms=28) == 0
    assert find_knee(steps, slo_p99_ms=10) is None
    assert find_knee(steps, slo_p99_ms=None) == 1  # 90 / 30 is the most throughput per ms of p99
    client = {"rps": 100.0, "failures": 0, "percentiles_ms": {"50%": 10.0, "90%": 20.0, "99%": 40.0, "100%": 90.0}}
    assert goodput_rps(client, 25.0) == pytest.approx(90.0)
    assert goodput_rps(client, 5.0) == 0.0
    assert goodput_rps({**client, "failures": 1}, 100.0) == 0.0


TOKEN = "loadtest-token"
TENANT = "X-Tenant: acme"


def _plain_app() -> Any:  # a Ray Serve Application
    """A plain Ray Serve app (not optiserve: no /metrics) answering the OpenAI embeddings shape on a Starlette
    request; it requires the ``X-Tenant`` header, so a run without it fails."""
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class PlainEmbeddings:
        async def __call__(self, request: Any) -> JSONResponse:  # a starlette.requests.Request
            if request.method != "POST" or not request.url.path.endswith("/v1/embeddings"):
                return JSONResponse({"error": "not found"}, status_code=404)
            if request.headers.get("x-tenant") != "acme":
                return JSONResponse({"error": "tenant"}, status_code=403)
            body = await request.json()
            texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
            data = [{"object": "embedding", "index": i, "embedding": [float(len(t))]} for i, t in enumerate(texts)]
            return JSONResponse({"object": "list", "data": data, "model": "plain"})

    return PlainEmbeddings.bind()  # type: ignore[attr-defined]  # a Ray Serve Deployment (untyped decorator)


@pytest.fixture(scope="module")
def plain_ray_serve(server) -> Iterator[str]:
    """The plain app beside optiserve on the shared Ray Serve instance, under /plain; removed afterwards."""
    from ray import serve

    serve.run(_plain_app(), name="plain-embeddings", route_prefix="/plain")
    try:
        yield f"{server.url}/plain"
    finally:
        serve.delete("plain-embeddings")


@pytest.mark.serve
def test_no_server_metrics_loadtest_of_a_plain_ray_serve_app_with_headers(plain_ray_serve: str, tmp_path) -> None:
    payload = tmp_path / "mine.jsonl"
    payload.write_text("".join(json.dumps({"text": f"my input number {i}"}) + "\n" for i in range(20)))
    run = _run_cli(
        "loadtest", "--host", plain_ray_serve, "--no-server-metrics", "--header", TENANT, "--payload", str(payload),
        "--users", "2", "--duration", "3", "--inputs", "3", "--out", str(tmp_path), "--label", "plain",
    )  # fmt: skip
    assert run.returncode == exit_codes.OK, run.stdout + run.stderr
    summary = json.loads((tmp_path / "plain.json").read_text())
    assert summary["client"]["requests"] > 5 and summary["client"]["failures"] == 0
    assert summary["server"] == {} and summary["server_metrics"] is False
    assert summary["header_names"] == ["X-Tenant"] and summary["payload"] == str(payload)
    report = (tmp_path / "plain.md").read_text()
    assert "Server-side numbers omitted" in report and "server (ingress histogram)" not in report
    assert "1..3 inputs per request" in report and "![plain_timeseries.png](plain_timeseries.png)" in report
    assert (tmp_path / "plain_timeseries.png").stat().st_size > 1000
    refused = _run_cli(  # the same run without the header: every request is a 403, so the run fails (exit 1)
        "loadtest", "--host", plain_ray_serve, "--no-server-metrics", "--users", "1", "--duration", "2",
        "--no-plots", "--out", str(tmp_path), "--label", "refused",
    )  # fmt: skip
    assert refused.returncode == exit_codes.ERROR, refused.stdout + refused.stderr
    assert json.loads((tmp_path / "refused.json").read_text())["client"]["error_rate"] == 1.0
    assert "Most frequent failures: " in refused.stdout and 'HTTP 403: {"error":"tenant"}' in refused.stdout


@pytest.fixture(scope="module")
def token_server(server, minilm_packages) -> Iterator:
    """The shared server redeployed with an API token (forwarded to replicas); restored afterwards."""
    try:
        server.deploy(minilm_packages.package.root, env={"OPTISERVE_API_TOKEN": TOKEN})
        yield server
    finally:
        server.deploy(minilm_packages.package.root)


@pytest.mark.serve
def test_loadtest_with_api_key_against_a_token_protected_server(token_server, tmp_path: Path) -> None:
    run = _run_cli(
        "loadtest", "--host", token_server.url, "--api-key", TOKEN, "--header", TENANT, "--users", "2",
        "--duration", "3", "--inputs", "2", "--max-error-rate", "0", "--out", str(tmp_path), "--label", "auth",
    )  # fmt: skip
    assert run.returncode == exit_codes.OK, run.stdout + run.stderr
    assert TOKEN not in run.stdout and TOKEN not in (tmp_path / "auth.json").read_text()  # never in a report
    summary = json.loads((tmp_path / "auth.json").read_text())
    assert summary["client"]["failures"] == 0 and summary["header_names"] == ["X-Tenant", "Authorization"]
    by_code = summary["server"]["requests_by_code"]
    assert set(by_code) == {"200"} and 0 <= by_code["200"] - summary["client"]["requests"] <= 2
    report = (tmp_path / "auth.md").read_text()
    assert "| server (ingress histogram) |" in report and "- **queue wait**:" in report
    unauthorized = _run_cli(  # without the key: 401s, over the error-rate limit, so the target is unmet (exit 3)
        "loadtest", "--host", token_server.url, "--users", "1", "--duration", "2", "--max-error-rate", "0.5",
        "--no-plots", "--out", str(tmp_path), "--label", "noauth",
    )  # fmt: skip
    assert unauthorized.returncode == exit_codes.UNMET, unauthorized.stdout + unauthorized.stderr
    refused = json.loads((tmp_path / "noauth.json").read_text())
    assert refused["client"]["error_rate"] == 1.0 and refused["failure_reasons"][0]["error"].startswith("HTTP 401")


@pytest.mark.serve
def test_locust_native_options_reach_a_token_protected_server(token_server, tmp_path: Path) -> None:
    """The Locust files' own options (no OPTISERVE_* variables): plain ``locust`` with --api-key and --inputs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTISERVE_")}
    final = tmp_path / "native"
    run = subprocess.run(
        [sys.executable, "-m", "locust", "-f", "loadtests/embeddings.py", "--headless", "--host", token_server.url,
         "-u", "2", "-r", "2", "-t", "3s", "--api-key", TOKEN, "--inputs", "2", "--header", TENANT,
         "--json-file", str(final), "--loglevel", "WARNING"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    stats = final_stats(Path(f"{final}.json"))
    assert stats["requests"] > 5 and stats["failures"] == 0


def test_locust_options_are_in_the_web_ui_and_the_key_is_masked() -> None:
    code = (
        "import json, loadtests.options; from locust.argument_parser import ui_extra_args_dict; "
        "print(json.dumps(ui_extra_args_dict([])))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    options = json.loads(run.stdout)
    assert {flag.dest for flag in REQUEST_FLAGS} <= set(options)
    assert options["api_key"]["is_secret"] and "[env: OPTISERVE_API_KEY]" in options["api_key"]["help_text"]
