"""A two-node Ray cluster on one machine, each node started with ``ray start`` as its own processes: placement by
GPU resources, a proxy on every node, autoscaling under a Locust step load, and losing the worker node under
load.

    .venv/bin/python benchmarks/cluster.py --package runs/demo/packages/optimized   # writes runs/cluster/cluster.json

The head declares 1 CPU and no GPU; the worker declares 2 CPUs and 1 logical GPU (a resource count: placement is
exercised without a device). One application serves the package with two CPU replicas (Serve spreads them over
the nodes) and a second application asks for half a GPU, so it can only land on the worker. Requests go through
both nodes' proxies. An autoscaled application (1..2 replicas, short delays) then takes a Locust step load
(1 user, then 8) and the running replica count is recorded until it is back to 1. Then a closed-loop load runs
through the head's proxy while the worker node's processes are SIGKILLed: the head's replica keeps answering;
the figures say how many requests failed and when.
Each node runs HAProxy as `optiserve serve` does (its own ports: on one machine they must differ), which retries a
request whose replica died before answering on another replica. After the kill a new worker node joins, and the
time until both replicas run again is recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.waiting import wait_for  # noqa: E402
from serving.ports import free_port  # noqa: E402

RAY = str(Path(sys.executable).with_name("ray"))


TEMP_DIR = "/tmp/ray-optiserve-cluster"  # its own sockets and logs: never touches another Ray on this machine
# Ray 2.60 token authentication, with this cluster's own token for every node and this driver.
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def ray_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Proxies spread requests over all replicas instead of preferring their own node's, so load entering through
    # the head reaches the worker's replica too (what node loss must be tested against).
    spread = {"RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0"}
    return {**env, **AUTH, **spread, **(extra or {})}


def ingress_envs() -> tuple[dict[str, str], dict[str, str]]:
    """HAProxy on every node, as `optiserve serve` runs it (serving.launcher: the wrapper, its timeouts and its
    retries of requests whose replica died), with each node's own ports: on one machine the two nodes' HAProxy
    stats, metrics and fallback ports, and their replicas' port ranges, must differ."""
    from modelpkg.settings import LAUNCHER_SET
    from serving.launcher import DIRECT_INGRESS_VARIABLES, ingress_environment

    head = {k: v for k, v in ingress_environment("haproxy").items() if k != LAUNCHER_SET.name}
    worker = dict(head)
    for name in ("STATS_PORT", "METRICS_PORT"):
        worker[f"RAY_SERVE_HAPROXY_{name}"] = str(free_port())
    for name in ("HTTP_PORT", "GRPC_PORT"):
        worker[f"RAY_SERVE_FALLBACK_PROXY_{name}"] = str(free_port())
    for protocol in ("HTTP", "GRPC"):  # each node takes half of the block the launcher chose
        low, high = (int(head[f"RAY_SERVE_DIRECT_INGRESS_{b}_{protocol}_PORT"]) for b in ("MIN", "MAX"))
        middle = (low + high) // 2
        head[f"RAY_SERVE_DIRECT_INGRESS_MAX_{protocol}_PORT"] = str(middle)
        worker[f"RAY_SERVE_DIRECT_INGRESS_MIN_{protocol}_PORT"] = str(middle + 1)
    assert all(name in head for name in DIRECT_INGRESS_VARIABLES)
    return head, worker


def _node(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A node in the foreground (``--block``) in its own session, so it can be killed as one process group."""
    return subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_nodes(gcs_port: int, worker_http_port: int, envs: tuple[dict[str, str], dict[str, str]]) -> list[Any]:
    head = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs_port}", "--num-cpus=1"]
    head += ["--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={TEMP_DIR}", "--block"]
    nodes = [_node(head, ray_env(envs[0]))]
    wait_for(lambda: _port_open(gcs_port), 120, "the head node's GCS")
    return [*nodes, start_worker(gcs_port, worker_http_port, envs[1])]


def start_worker(gcs_port: int, worker_http_port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A worker node with 2 CPUs and 1 logical GPU, its HTTP ingress on ``worker_http_port``."""
    ports = {
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--metrics-export-port": free_port(),
        "--runtime-env-agent-port": free_port(),
    }
    worker = [RAY, "start", f"--address=127.0.0.1:{gcs_port}", "--node-ip-address=127.0.0.1", "--num-cpus=2"]
    worker += ["--num-gpus=1", "--block", *(f"{k}={v}" for k, v in ports.items())]
    return _node(worker, ray_env({**env, "RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(worker_http_port)}))


def kill_node(node: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(node.pid, signal.SIGKILL)  # raylet, its workers (replicas, proxy) and the `ray start` process
    except ProcessLookupError:
        pass
    node.wait()


async def closed_loop(url: str, seconds: float, workers: int, events: list[tuple[float, int, str | None]]) -> None:
    """POST single sentences from ``workers`` concurrent clients for ``seconds``; record (time, status, the node
    that answered, from the ``OptiServe-Node`` header)."""
    start = time.monotonic()

    async def client() -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            while time.monotonic() - start < seconds:
                node = None
                try:
                    response = await http.post(url, json={"input": "a node may go away"})
                    status, node = response.status_code, response.headers.get("optiserve-node")
                except httpx.HTTPError:
                    status = 0
                events.append((time.monotonic() - start, status, node))

    await asyncio.gather(*(client() for _ in range(workers)))


def running_replicas(app: str) -> int:
    from ray import serve

    from serving.app import InferenceService

    status = serve.status().applications.get(app)
    if status is None or InferenceService.name not in status.deployments:
        return 0
    return sum(n for state, n in status.deployments[InferenceService.name].replica_states.items() if state == "RUNNING")


def autoscale(package: Path, env: dict[str, str], url: str, high_s: float) -> dict[str, Any]:
    """Replace the fixed application with an autoscaled one (1..2 replicas, short delays), drive it with a Locust
    step shape (1 user, then 8), and record the running replicas until they are back to 1 after the load."""
    import threading

    from ray import serve

    from loadtests.runner import LoadTestConfig, run_loadtest
    from serving.app import build_app

    serve.delete("cpu")
    config = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2}
    config |= {"upscale_delay_s": 1.0, "downscale_delay_s": 4.0, "look_back_period_s": 2.0}
    serve.run(build_app([str(package)], env_vars=env, autoscaling_config=config), name="auto", route_prefix="/")
    low_s = 5
    timeline: list[tuple[float, int]] = []
    stop = threading.Event()
    start = time.monotonic()

    def poll() -> None:
        while not stop.is_set():
            timeline.append((time.monotonic() - start, running_replicas("auto")))
            time.sleep(0.5)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    out = Path(TEMP_DIR) / "locust"
    stages = {"OPTISERVE_STAGES": f"1:{low_s},8:{high_s:g}"}
    load = run_loadtest(
        LoadTestConfig(host=url, out_dir=out, duration_s=int(low_s + high_s + 30), shape="step", env=stages,
                       plots=False, label="autoscale")
    )  # fmt: skip
    load_end = time.monotonic() - start
    wait_for(lambda: running_replicas("auto") == 1, 60, "scale-down to 1 replica")
    down = time.monotonic() - start  # when the wait saw 1 replica again (within its 0.5 s polling)
    stop.set()
    poller.join()
    up = next((t for t, n in timeline if t >= low_s and n >= 2), None)
    serve.delete("auto")
    return {
        "config": config,
        "max_replicas_seen": max(n for _, n in timeline),
        "scale_up_s_after_load_rose": None if up is None else up - low_s,
        "scale_down_s_after_load_stopped": down - load_end,
        "requests": load.client["requests"],
        "failures": load.failures,
        "timeline": timeline[:: max(1, len(timeline) // 60)],
    }


def run(package: Path, load_s: float, kill_at_s: float, autoscale_s: float) -> dict[str, Any]:
    os.environ.update(AUTH)  # before Ray is imported in this process
    os.environ.pop("RAY_ADDRESS", None)
    import ray
    from ray import serve

    from serving.app import build_app
    from serving.replica import node_tag

    gcs_port, head_http, worker_http = free_port(), free_port(), free_port()
    envs = ingress_envs()
    head, worker = start_nodes(gcs_port, worker_http, envs)
    replacement: subprocess.Popen[bytes] | None = None
    figures: dict[str, Any] = {}
    try:
        ray.init(address=f"127.0.0.1:{gcs_port}", log_to_driver=False)
        wait_for(lambda: len([n for n in ray.nodes() if n["Alive"]]) == 2, 120, "two live nodes")
        serve.start(http_options={"host": "127.0.0.1", "port": head_http, "location": "EveryNode"})
        env = {"PROMETHEUS_MULTIPROC_DIR": "/tmp/optiserve-cluster-metrics"}
        # The GPU application first: it can only go to the worker and takes one of its two CPUs, so the two CPU
        # replicas that follow end up one per node.
        serve.run(build_app([str(package)], env_vars=env, num_gpus=0.5), name="gpu", route_prefix="/gpu")
        serve.run(build_app([str(package)], env_vars=env, num_replicas=2), name="cpu", route_prefix="/")
        model = json.loads((package / "manifest.json").read_text())["name"]
        head_node = node_tag(ray.get_runtime_context().get_node_id())

        def describe(port: int, prefix: str = "") -> dict[str, Any]:
            url = f"http://127.0.0.1:{port}{prefix}/v2/models/{model}"
            return httpx.get(url, timeout=10).json()["parameters"]["optiserve"]

        for port in (head_http, worker_http):
            wait_for(lambda p=port: describe(p)["device"] == "cpu", 180, f"the proxy on port {port}")
        gpu = describe(head_http, "/gpu")
        figures["gpu_replica"] = {
            "on_worker": gpu["node"] != head_node,
            "gpus": gpu["gpus"],
            "device": gpu["device"],
        }
        seen = {describe(head_http)["node"] for _ in range(30)}  # requests spread over both replicas
        figures["cpu_replicas_on_nodes"] = len(seen)
        figures["served_through"] = {
            "head_proxy": httpx.post(f"http://127.0.0.1:{head_http}/v1/embeddings", json={"input": "x"}).status_code,
            "worker_proxy": httpx.post(
                f"http://127.0.0.1:{worker_http}/v1/embeddings", json={"input": "x"}
            ).status_code,
        }

        figures["autoscaling"] = autoscale(package, env, f"http://127.0.0.1:{head_http}", autoscale_s)
        serve.run(build_app([str(package)], env_vars=env, num_replicas=2), name="cpu", route_prefix="/")

        wait_for(lambda: len({describe(head_http)["node"] for _ in range(12)}) == 2, 60, "both replicas answering")
        events: list[tuple[float, int, str | None]] = []
        back: dict[str, float] = {}

        async def load_kill_and_replace() -> None:
            load = asyncio.create_task(closed_loop(f"http://127.0.0.1:{head_http}/v1/embeddings", load_s, 4, events))
            await asyncio.sleep(kill_at_s)
            nonlocal replacement
            known = {node for _, _, node in events if node}  # the head's and the worker's
            killed = time.monotonic()
            kill_node(worker)
            figures["killed_at_s"] = kill_at_s
            replacement = await asyncio.to_thread(start_worker, gcs_port, free_port(), envs[1])
            # back: a replica on the new node answers (and Ray runs two again)
            await asyncio.to_thread(
                wait_for, lambda: describe(head_http)["node"] not in known, 180, "a replica on the new node"
            )
            back["replicas_back_s"] = time.monotonic() - killed
            back["running_replicas_after"] = running_replicas("cpu")
            await load

        asyncio.run(load_kill_and_replace())
        failed = [(t, s) for t, s, _ in events if s != 200]
        after = [s for t, s, _ in events if t > kill_at_s + 10]
        figures["node_loss"] = {
            "requests": len(events),
            # requests the worker's replica answered before the kill (load reached the node that was lost)
            "served_by_lost_node_before_kill": sum(
                1 for t, s, node in events if t < kill_at_s and s == 200 and node != head_node
            ),
            **back,
            "failed": len(failed),
            "failed_before_kill": sum(1 for t, _ in failed if t < kill_at_s),
            "failed_within_10s_of_kill": sum(1 for t, _ in failed if kill_at_s <= t <= kill_at_s + 10),
            "last_failure_s_after_kill": max((t - kill_at_s for t, _ in failed), default=None),
            "ok_after_10s": sum(1 for s in after if s == 200),
            "failed_after_10s": sum(1 for s in after if s != 200),
            "statuses": sorted({s for _, s, _ in events}),
        }
    finally:
        ray.shutdown()
        for node in (replacement, worker, head):
            if node is not None:
                kill_node(node)
        leftovers = _cluster_processes()
        for proc in leftovers:  # anything that left the process groups: matched by this cluster's temp dir
            proc.kill()
        figures["leftover_processes_killed"] = len(leftovers)
    return figures


def _cluster_processes() -> list[Any]:
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(TEMP_DIR in part for part in proc.info["cmdline"] or []) and proc.pid != os.getpid():
            found.append(proc)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, required=True)
    parser.add_argument("--load-s", type=float, default=40.0)
    parser.add_argument("--kill-at-s", type=float, default=10.0)
    parser.add_argument("--autoscale-s", type=float, default=20.0, help="seconds of high load for autoscaling")
    parser.add_argument("--out", type=Path, default=Path("runs/cluster"))
    args = parser.parse_args()
    figures = run(args.package.resolve(), args.load_s, args.kill_at_s, args.autoscale_s)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cluster.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
