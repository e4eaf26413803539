"""Two Ray nodes started with ``ray start`` on 127.0.0.1 (benchmarks/cluster.py, run as its own process): GPU
placement by resources, HAProxy on every node, autoscaling 1 -> 2 -> 1 under a Locust step load, and the worker
node lost under load (no request fails) and replaced.

Run alone with: .venv/bin/pytest -m cluster
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.paths import ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]


def test_two_nodes_place_by_resources_autoscale_and_survive_losing_one(minilm_packages, tmp_path, figures) -> None:
    run = subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks" / "cluster.py"), "--package", str(minilm_packages.package.root),
            "--load-s", "28", "--kill-at-s", "8", "--autoscale-s", "14", "--out", str(tmp_path),
        ],
        capture_output=True, text=True, timeout=540, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((tmp_path / "cluster.json").read_text())
    print("\ncluster:", json.dumps(result))
    figures["cluster"] = result
    assert result["gpu_replica"] == {"on_worker": True, "gpus": ["0"], "device": "cpu"}
    assert result["cpu_replicas_on_nodes"] == 2
    assert result["served_through"] == {"head_proxy": 200, "worker_proxy": 200}
    scaling = result["autoscaling"]
    assert scaling["max_replicas_seen"] == 2 and scaling["scale_up_s_after_load_rose"] is not None
    assert scaling["scale_down_s_after_load_stopped"] is not None and scaling["failures"] == 0
    loss = result["node_loss"]
    assert loss["served_by_lost_node_before_kill"] > 0  # the lost node was taking traffic
    assert loss["ok_after_10s"] > 0  # the head's replica carries on
    # A request whose replica died before answering is retried on the other one (HAProxy, serving/launcher.py):
    # losing the node fails nothing, and a new node takes the lost replica back.
    assert loss["failed"] == 0, loss
    assert loss["replicas_back_s"] is not None
