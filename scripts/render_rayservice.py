"""Write deploy/kuberay/rayservice.yaml's ``serveConfigV2`` from deploy/serve_config.yaml, so the two never drift.

    .venv/bin/python scripts/render_rayservice.py          # rewrite in place
    .venv/bin/python scripts/render_rayservice.py --check  # exit 1 if the manifest is out of date (tests run this)

KubeRay takes only the ``applications`` (and ``proxy_location``/``http_options``) of a Serve config. In the pods
the package is a volume mounted at /models, the proxy listens on the pod's address, each replica takes one GPU,
and the replica count follows load: ``num_replicas`` becomes an ``autoscaling_config`` whose bounds are the GPU
worker group's ``minReplicas``/``maxReplicas`` (one GPU per pod, one GPU per replica, so the Ray autoscaler adds a
pod exactly when Serve adds a replica) and whose ``target_ongoing_requests`` is the batch size (a replica holds
``max_batch_size`` requests to fill one batch). Everything else is the same config.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SERVE_CONFIG = ROOT / "deploy" / "serve_config.yaml"
RAYSERVICE = ROOT / "deploy" / "kuberay" / "rayservice.yaml"
# In the pods, packages are mounted read-only at /models (see the volume in the manifest).
POD_PACKAGE_DIR = "/models/optimized"
MARKER = "  serveConfigV2: |\n"
GPU_GROUP = "gpu"
# Seconds of sustained load before Serve adds a replica (the autoscaler then starts a GPU pod, which takes
# minutes: image pull, model load), and of low load before it removes one (the pod goes idleTimeoutSeconds later).
UPSCALE_DELAY_S = 30
DOWNSCALE_DELAY_S = 300


def gpu_worker_bounds(manifest: dict) -> tuple[int, int]:
    """The GPU worker group's (minReplicas, maxReplicas): one pod holds one GPU, so one replica."""
    (group,) = (g for g in manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] == GPU_GROUP)
    for container in group["template"]["spec"]["containers"]:
        if container["resources"]["limits"].get("nvidia.com/gpu") != "1":
            raise ValueError(f"worker group {GPU_GROUP!r}: autoscaling bounds assume one GPU per pod")
    return group["minReplicas"], group["maxReplicas"]


def autoscaling_config(deployment: dict, bounds: tuple[int, int]) -> dict:
    low, high = bounds
    return {
        "min_replicas": low,
        "max_replicas": high,
        "target_ongoing_requests": deployment["user_config"]["max_batch_size"],
        "upscale_delay_s": UPSCALE_DELAY_S,
        "downscale_delay_s": DOWNSCALE_DELAY_S,
    }


def serve_config_v2(manifest: dict) -> str:
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    bounds = gpu_worker_bounds(manifest)
    for app in config["applications"]:
        app["args"]["package_dir"] = POD_PACKAGE_DIR
        app["args"]["num_gpus"] = "1"  # the runtime uses the GPU it is given (CUDA/TensorRT providers)
        for deployment in app["deployments"]:
            deployment["ray_actor_options"]["num_gpus"] = 1  # replicas land on the GPU worker group
            deployment.pop("num_replicas", None)  # Serve rejects num_replicas together with autoscaling_config
            deployment["autoscaling_config"] = autoscaling_config(deployment, bounds)
    # Inside a pod the proxy must listen on the pod's address for the Kubernetes Service to reach it.
    config["http_options"]["host"] = "0.0.0.0"
    body = yaml.safe_dump(
        {k: config[k] for k in ("proxy_location", "http_options", "applications")}, sort_keys=False, width=110
    )
    return "".join(f"    {line}\n" for line in body.splitlines())


def rendered() -> str:
    text = RAYSERVICE.read_text()
    start = text.index(MARKER) + len(MARKER)
    end = text.index("  rayClusterConfig:", start)
    return text[:start] + serve_config_v2(yaml.safe_load(text)) + text[end:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    new = rendered()
    if args.check:
        if new != RAYSERVICE.read_text():
            print(f"{RAYSERVICE} is out of date: run scripts/render_rayservice.py", file=sys.stderr)
            return 1
        return 0
    RAYSERVICE.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
