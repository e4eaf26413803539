"""A short, bounded, real Locust run against the live server, and the metric arithmetic behind the summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests.runner import LoadTestConfig, run_loadtest
from loadtests.scrape import HistogramDelta, histogram_delta


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
    assert summary.server["requests_by_code"]["200"] >= summary.client["requests"]
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
