"""The deployment files agree with the code: deploy/serve_config.yaml and deploy/prometheus.yml. No Ray starts."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SERVE_CONFIG = ROOT / "deploy" / "serve_config.yaml"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return yaml.safe_load(SERVE_CONFIG.read_text())


@pytest.fixture(scope="module")
def app_config(config: dict[str, Any]) -> dict[str, Any]:
    (app,) = config["applications"]
    return app


def _deployment(app_config: dict[str, Any], name: str) -> dict[str, Any]:
    (deployment,) = (d for d in app_config["deployments"] if d["name"] == name)
    return deployment


def test_serve_config_is_a_valid_serve_deploy_schema(config: dict[str, Any]) -> None:
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    assert schema.http_options.host == "127.0.0.1"
    assert schema.http_options.port == 8000
    assert schema.http_options.request_timeout_s == 60
    (app,) = schema.applications
    assert app.name == "optiserve"
    assert app.route_prefix == "/"
    assert set(app.deployment_names) == {"InferenceService"}


def test_import_path_resolves_to_app_builder(app_config: dict[str, Any]) -> None:
    module_name, _, attribute = app_config["import_path"].partition(":")
    assert (module_name, attribute) == ("serving.app", "app_builder")
    builder = getattr(importlib.import_module(module_name), attribute)
    assert callable(builder)


def test_args_are_accepted_by_app_builder_and_metrics_dir_is_consistent(app_config: dict[str, Any]) -> None:
    import serving.app
    from serving.metrics import MULTIPROC_ENV

    args = app_config["args"]
    assert set(args) <= serving.app.APP_BUILDER_ARGS
    assert args["package_dir"] == "/models/optimized"
    # Replicas get the variable from the application's runtime_env (a deployment's ray_actor_options in the
    # config replaces the code's, runtime_env included); it must name the same directory as metrics_dir.
    assert app_config["runtime_env"]["env_vars"][MULTIPROC_ENV] == args["metrics_dir"] == "/tmp/optiserve-metrics"


def test_user_config_keys_are_serving_defaults_and_batches_can_fill(app_config: dict[str, Any]) -> None:
    from serving.package import ServingDefaults

    model = _deployment(app_config, "InferenceService")
    user_config = model["user_config"]
    assert user_config, "InferenceService needs a user_config"
    assert set(user_config) <= set(ServingDefaults.model_fields)
    ServingDefaults.model_validate(user_config)  # values in range too
    assert model["max_ongoing_requests"] >= 2 * user_config["max_batch_size"]


def test_deployment_names_exist_in_serving_app(app_config: dict[str, Any]) -> None:
    import serving.app

    code_names = {serving.app.InferenceService.name}
    assert {d["name"] for d in app_config["deployments"]} == code_names


def test_app_builder_rejects_unknown_args() -> None:
    from serving.app import app_builder

    with pytest.raises(ValueError, match="package_dir"):
        app_builder({"bogus": "1"})
    with pytest.raises(ValueError, match="bogus"):
        app_builder({"package_dir": "/nonexistent", "bogus": "1"})


def test_prometheus_scrapes_the_serve_http_port(config: dict[str, Any]) -> None:
    prometheus = yaml.safe_load(PROMETHEUS.read_text())
    assert prometheus["global"]["scrape_interval"] == "5s"
    (job,) = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    targets = [target for static in job["static_configs"] for target in static["targets"]]
    http = config["http_options"]
    assert targets == [f"{http['host']}:{http['port']}"] == ["127.0.0.1:8000"]


def test_grafana_dashboard_queries_only_metrics_the_server_exports() -> None:
    """Every optiserve_* series a dashboard panel queries is one serving.metrics defines (with its suffix)."""
    import json
    import re

    from serving.metrics import metrics

    dashboard = json.loads((ROOT / "deploy" / "grafana" / "optiserve.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 10
    exported = set()
    for metric in metrics().__dict__.values():
        for family in metric.collect():
            exported |= {family.name} | {f"{family.name}{s}" for s in ("_total", "_bucket", "_sum", "_count")}
    queried = {name for expr in exprs for name in re.findall(r"\b(optiserve_[a-z_]+)", expr)}
    assert queried and queried <= exported, queried - exported


def test_rayservice_manifest_is_current_and_its_serve_config_is_valid() -> None:
    import subprocess
    import sys

    from ray.serve.schema import ServeDeploySchema

    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "render_rayservice.py"), "--check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    manifest = yaml.safe_load((ROOT / "deploy" / "kuberay" / "rayservice.yaml").read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    serve_config = ServeDeploySchema.model_validate(yaml.safe_load(manifest["spec"]["serveConfigV2"]))
    (app,) = serve_config.applications
    (deployment,) = app.deployments
    assert deployment.ray_actor_options.num_gpus == 1 and app.args["package_dir"].startswith("/models/")
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # replicas go to the workers
    (gpu_group,) = cluster["workerGroupSpecs"]
    (container,) = gpu_group["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert gpu_group["template"]["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
