"""The control plane of a running server: where it runs, what it serves, and changing that while it serves.

- ``optiserve serve`` records where it runs (a file per server in a per-user directory, which ``--address auto``
  reads: a Ray started by ``ray.init()`` writes no cluster file) and keeps its :class:`DeploySpec` in Ray's
  key-value store, so any driver on the cluster can apply exactly what it applied, with other packages.
- Replicas publish their state there too (:mod:`serving.served`); :func:`status` reads it.
- :func:`deploy` and :func:`rollback` apply a spec with another package set and wait until every replica serves
  it. The package set travels in the deployment's ``user_config`` and the deployment's version is pinned
  (:data:`DEPLOYMENT_VERSION`), so Ray Serve hands the change to running replicas through ``reconfigure()``,
  where each one swaps packages in place (load and warm up beside the running one, then drain it). Ray Serve
  2.60 has no public way to do this from Python: ``serve.run`` gives every redeploy a new random code version,
  which restarts every replica (``max_surge_percent`` 0 stops the old ones first). When a replica reports that
  the new package failed, the previous set is applied again and :class:`DeployError` says why.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from modelpkg.errors import OptiserveError
from modelpkg.remote import normalized

log = logging.getLogger("optiserve")
APP_NAME = "optiserve"
DEPLOYMENT_NAME = "InferenceService"
KV_NAMESPACE = "optiserve"
FRESH_S = 10.0  # a replica that has not reported for this long (health checks report every 2 s) is gone
DEPLOY_TIMEOUT_S = 600.0
POLL_S = 0.25


class DeployError(OptiserveError):
    """A change of the served packages did not complete; the previous packages keep serving."""


class CanaryRolledBackError(OptiserveError):
    """A canary was out of its limits and was withdrawn; the stable package serves everything again."""


# -- replica state (written by serving.served in each replica) --------------------------------------------------


def _replica_key() -> str | None:
    """This replica's key in the store, or None outside a Serve replica."""
    try:
        from ray import serve

        context = serve.get_replica_context()
    except Exception:  # noqa: BLE001 -- not a replica (a test, a plain Python session)
        return None
    return f"replica:{context.app_name}:{context.replica_id.unique_id}"


def publish_replica_state(payload: str) -> None:
    key = _replica_key()
    if key is None:
        return
    try:
        from ray.experimental.internal_kv import _internal_kv_put

        _internal_kv_put(key, payload, overwrite=True, namespace=KV_NAMESPACE)
    except Exception as exc:  # noqa: BLE001 -- reporting must never break serving
        log.debug("could not publish the replica state: %s", exc)


def withdraw_replica_state() -> None:
    key = _replica_key()
    if key is None:
        return
    try:
        from ray.experimental.internal_kv import _internal_kv_del

        _internal_kv_del(key, namespace=KV_NAMESPACE)
    except Exception:  # noqa: BLE001 -- best effort at shutdown; stale entries age out (FRESH_S)
        pass


def replica_states(app: str = APP_NAME) -> list[dict[str, Any]]:
    """The state of every replica of ``app`` that reported within :data:`FRESH_S`."""
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_list

    now = time.time()
    states = []
    for key in _internal_kv_list(f"replica:{app}:", namespace=KV_NAMESPACE):
        raw = _internal_kv_get(key, namespace=KV_NAMESPACE)
        if raw is None:
            continue
        state = json.loads(raw)
        if now - state.get("updated", 0) <= FRESH_S:
            state["replica"] = (key.decode() if isinstance(key, bytes) else key).rsplit(":", 1)[-1]
            states.append(state)
    return states


def running_replicas(app: str = APP_NAME) -> dict[str, int]:
    """Ray Serve's replica counts by state (RUNNING, STARTING, STOPPING, ...) for the app's deployment."""
    from ray import serve

    application = serve.status().applications.get(app)
    if application is None:
        return {}
    deployment = application.deployments.get(DEPLOYMENT_NAME)
    return (
        {getattr(state, "value", str(state)): n for state, n in deployment.replica_states.items()} if deployment else {}
    )


# -- what a server deploys --------------------------------------------------------------------------------------


@dataclass
class DeploySpec:
    """Everything :func:`apply` needs to (re)deploy a server's application; kept in the store."""

    packages: list[dict[str, Any]]  # [{"name": ..., "path": ...}], in order
    threads: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    env_vars: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # build_app's num_gpus, num_replicas, autoscaling_config
    url: str = ""
    generation: int = 1
    previous: list[dict[str, Any]] | None = None  # the set before the last change: what rollback returns to
    draining: bool = False
    rollout: dict[str, Any] | None = None  # the last canary decision (model, package, outcome, reason, at)

    def user_config(self) -> dict[str, Any]:
        return {
            **self.overrides,
            "packages": self.packages,
            "generation": self.generation,
            "draining": self.draining,
            **({"rollout": self.rollout} if self.rollout else {}),
        }


def _spec_key(app: str) -> str:
    return f"spec:{app}"


def apply(spec: DeploySpec, app: str = APP_NAME) -> None:
    """Deploy ``spec`` (the first time, or as an in-place change of a running application) and store it."""
    from ray import serve
    from ray.experimental.internal_kv import _internal_kv_put

    from serving.app import build_app

    application = build_app(
        [p["path"] for p in spec.packages],
        spec.threads,
        spec.user_config(),
        spec.env_vars,
        served_names=[p["name"] for p in spec.packages],
        **spec.options,
    )
    serve.run(application, name=app, route_prefix="/")
    _internal_kv_put(_spec_key(app), json.dumps(asdict(spec)), overwrite=True, namespace=KV_NAMESPACE)


def load_spec(app: str = APP_NAME) -> DeploySpec:
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(_spec_key(app), namespace=KV_NAMESPACE)
    if raw is None:
        raise OptiserveError(f"no optiserve server runs on this Ray cluster (no application {app!r} deployed by it)")
    return DeploySpec(**json.loads(raw))


# -- where servers run (for --address auto) -----------------------------------------------------------------------


def records_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"optiserve-{os.getuid()}" / "servers"


def write_record(url: str, ray_address: str) -> Path:
    """Record that this process serves ``url`` on the Ray cluster at ``ray_address``; returns the file."""
    directory = records_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{os.getpid()}.json"
    path.write_text(json.dumps({"pid": os.getpid(), "url": url, "ray_address": ray_address}))
    return path


def local_servers() -> list[dict[str, Any]]:
    """The records of the servers running on this machine (a record whose process is gone is removed)."""
    from serving.metrics import pid_alive

    records = []
    for path in sorted(records_dir().glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if pid_alive(int(record.get("pid", 0))):
            records.append(record)
        else:
            path.unlink(missing_ok=True)  # its server was killed
    return records


def resolve_address(address: str) -> str:
    """A Ray address: as given, or for ``auto`` the one the only ``optiserve serve`` on this machine recorded."""
    if address != "auto":
        return address
    servers = local_servers()
    if not servers:
        raise OptiserveError(
            f"no optiserve server runs on this machine (nothing in {records_dir()}); "
            "give --address HOST:PORT, its Ray cluster's address"
        )
    if len(servers) > 1:
        listed = ", ".join(f"{s['url']} (--address {s['ray_address']})" for s in servers)
        raise OptiserveError(f"several optiserve servers run on this machine: {listed}; choose one with --address")
    return str(servers[0]["ray_address"])


def connect(address: str) -> None:
    """Join the Ray cluster at ``address`` (``auto``: :func:`resolve_address`) as a driver."""
    import ipaddress

    import ray

    if ray.is_initialized():
        return
    resolved = resolve_address(address)
    host = resolved.rsplit(":", 1)[0]
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:  # a local server's Ray runs on 127.0.0.1 (serving.launcher); this driver must too
        from serving.launcher import _loopback_ray

        _loopback_ray()
    # A local ray.init() cluster uses token authentication with the token it saved (~/.ray/auth_token), but a
    # driver joining it turns authentication on only when told: Ray's own rule for "a token exists" decides.
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    ray.init(address=resolved, log_to_driver=False, logging_level=logging.WARNING)


# -- changing what is served ----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    ok: bool
    reason: str = ""
    seconds: float = 0.0
    replicas: list[dict[str, Any]] = field(default_factory=list)


def _expected(packages: list[dict[str, Any]]) -> dict[str, tuple[str, str | None]]:
    """Each model's package id and its canary's (None without one), as replicas report them."""
    from modelpkg.package import read_manifest
    from serving.replica import package_id

    def identity(path: str) -> str:
        return package_id(read_manifest(path))

    return {
        p["name"]: (identity(p["path"]), identity(p["canary"]["path"]) if p.get("canary") else None) for p in packages
    }


def _paths(packages: list[dict[str, Any]]) -> dict[str, set[str]]:
    return {p["name"]: {p["path"], *([p["canary"]["path"]] if p.get("canary") else [])} for p in packages}


def wait_for(spec: DeploySpec, timeout_s: float, since: float, app: str = APP_NAME) -> Outcome:
    """Wait until every running replica applied ``spec.generation`` and serves its packages with nothing left
    loading or draining; or a replica reports that a package of it failed (after ``since``, a ``time.time()``)."""
    expected = _expected(spec.packages)
    paths = _paths(spec.packages)
    started = time.monotonic()
    while True:
        states = [s for s in replica_states(app) if s["generation"] >= spec.generation]
        for state in states:
            for name in expected:
                failed = state["models"].get(name, {}).get("failed")
                if failed and failed["path"] in paths[name] and failed["at"] >= since:
                    return Outcome(False, f"{name}: {failed['error']}", time.monotonic() - started, states)
        running = running_replicas(app).get("RUNNING", 0)
        if running and len(states) >= running and all(_settled(s["models"], expected) for s in states):
            return Outcome(True, "", time.monotonic() - started, states)
        if time.monotonic() - started > timeout_s:
            return Outcome(
                False,
                f"not every replica served the new packages within {timeout_s:g} s",
                time.monotonic() - started,
                states,
            )
        time.sleep(POLL_S)


def _settled(models: dict[str, Any], expected: dict[str, tuple[str, str | None]]) -> bool:
    """A replica serves exactly the expected packages (and canaries), with nothing loading or draining."""
    if set(models) != set(expected):
        return False
    return all(
        (models[name]["serving"] or {}).get("package") == package
        and (models[name]["canary"] or {}).get("package") == canary
        and not models[name]["loading"]
        and not models[name]["draining"]
        for name, (package, canary) in expected.items()
    )


def _merge(current: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``current`` with each model of ``new`` replaced (same name) or added."""
    by_name = {p["name"]: p for p in new}
    merged = [by_name.pop(p["name"], p) for p in current]
    return merged + list(by_name.values())


def deploy(
    package_dirs: list[Path],
    address: str = "auto",
    served_names: list[str] | None = None,
    timeout_s: float = DEPLOY_TIMEOUT_S,
) -> tuple[DeploySpec, Outcome]:
    """Serve ``package_dirs`` on the running server (replacing the models of the same names, adding others) and
    wait until every replica does. Raises :class:`~modelpkg.errors.PackageError` before changing anything when a
    package does not verify here, and :class:`DeployError` (after restoring the previous set) when a replica
    could not load or warm it up."""
    from modelpkg.package import load_package

    names = list(served_names or [])
    if len(names) > len(package_dirs):
        raise OptiserveError("--served-model-name is given more often than there are packages")
    slots = []
    for index, directory in enumerate(package_dirs):
        package = load_package(directory)  # every file's sha256: a corrupt package stops here
        name = names[index] if index < len(names) else package.manifest.name
        slots.append({"name": name, "path": normalized(directory)})
    connect(address)
    current = load_spec()
    target = replace(current, packages=_merge(current.packages, slots), previous=current.packages)
    return current, _change(current, replace(target, generation=current.generation + 1), timeout_s)


def rollback(address: str = "auto", timeout_s: float = DEPLOY_TIMEOUT_S) -> tuple[DeploySpec, Outcome]:
    """Serve the package set that was served before the last change."""
    connect(address)
    current = load_spec()
    if current.previous is None:
        raise OptiserveError("nothing to roll back to: the server has served one package set since it started")
    target = replace(current, packages=current.previous, previous=current.packages, generation=current.generation + 1)
    return current, _change(current, target, timeout_s)


def _change(current: DeploySpec, target: DeploySpec, timeout_s: float) -> Outcome:
    since, started = time.time(), time.monotonic()
    apply(target)
    outcome = wait_for(target, timeout_s, since)
    outcome.seconds = time.monotonic() - started
    if outcome.ok:
        return outcome
    restore = replace(current, generation=target.generation + 1)
    apply(restore)
    restored = wait_for(restore, timeout_s, time.time())
    still = ", ".join(f"{p['name']} from {p['path']}" for p in current.packages)
    if not restored.ok:
        raise DeployError(f"{outcome.reason}; restoring the previous packages did not complete: {restored.reason}")
    raise DeployError(f"{outcome.reason}; still serving {still}")


@dataclass(frozen=True)
class CanaryLimits:
    """When a canary is promoted: it takes ``fraction`` of the model's requests for ``window_s``; then it must have
    answered at least ``min_requests``, with an error rate of at most ``max_error_rate`` and a mean latency of at
    most ``max_latency_ratio`` times the stable package's in the same window; and, for a package of the same source
    model, agree with the stable package on held-out inputs (``min_agreement``: cosine mean, or top-1 agreement
    for classifiers) before any window starts."""

    fraction: float = 0.1
    window_s: float = 60.0
    min_requests: int = 20
    max_error_rate: float = 0.01
    max_latency_ratio: float = 1.5
    min_agreement: float = 0.99

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise OptiserveError(f"--canary takes a fraction of requests in (0, 1), got {self.fraction}")


def _traffic(name: str) -> dict[str, dict[str, float]]:
    """The model's stable and canary traffic, summed over the replicas that report now."""
    totals: dict[str, dict[str, float]] = {"stable": {}, "canary": {}}
    for state in replica_states():
        model = state["models"].get(name) or {}
        for role, key in (("stable", "serving"), ("canary", "canary")):
            for field_name, value in ((model.get(key) or {}).get("traffic") or {}).items():
                if field_name != "p99_s":
                    totals[role][field_name] = totals[role].get(field_name, 0.0) + value
    return totals


def judge_canary(name: str, limits: CanaryLimits) -> tuple[str, str, dict[str, Any]]:
    """Watch a live canary: ``("promoted" or "rolled_back", reason, figures)``."""
    agreements = [
        state["models"][name]["canary"]["agreement"]
        for state in replica_states()
        if (state["models"].get(name) or {}).get("canary")
    ]
    measured = [a for a in agreements if a is not None]
    figures: dict[str, Any] = {"agreement": min(measured, key=lambda a: a["score"]) if measured else None}
    if measured and figures["agreement"]["score"] < limits.min_agreement:
        worst = figures["agreement"]
        return (
            "rolled_back",
            (
                f"agreement: {worst['judged_by']} {worst['score']:.4f} with the running package on "
                f"{worst['samples']} held-out inputs, below {limits.min_agreement}"
            ),
            figures,
        )
    before = _traffic(name)
    time.sleep(limits.window_s)
    after = _traffic(name)
    delta = {
        role: {
            k: max(0.0, after[role].get(k, 0.0) - before[role].get(k, 0.0)) for k in ("requests", "errors", "seconds")
        }
        for role in ("stable", "canary")
    }
    figures["window"] = delta
    canary, stable = delta["canary"], delta["stable"]
    answered = canary["requests"] + canary["errors"]
    if answered < limits.min_requests:
        return (
            "rolled_back",
            f"traffic: the canary got {answered:.0f} requests in {limits.window_s:g} s (at least "
            f"{limits.min_requests} needed)",
            figures,
        )
    error_rate = canary["errors"] / answered
    if error_rate > limits.max_error_rate:
        return (
            "rolled_back",
            f"error_rate: {error_rate:.3f} over {answered:.0f} requests, above {limits.max_error_rate}",
            figures,
        )
    if stable["requests"] and canary["requests"]:
        ratio = (canary["seconds"] / canary["requests"]) / max(stable["seconds"] / stable["requests"], 1e-9)
        figures["latency_ratio"] = ratio
        if ratio > limits.max_latency_ratio:
            return (
                "rolled_back",
                f"latency: mean {ratio:.2f}x the stable package's, above {limits.max_latency_ratio}x",
                figures,
            )
    return "promoted", f"within_limits: {answered:.0f} canary requests, error rate {error_rate:.3f}", figures


def canary(
    package_dir: Path,
    limits: CanaryLimits,
    address: str = "auto",
    served_name: str | None = None,
    timeout_s: float = DEPLOY_TIMEOUT_S,
) -> tuple[str, dict[str, Any]]:
    """Serve ``package_dir`` as a canary of the model of its name beside the running package, judge it live
    (:func:`judge_canary`) and promote it or withdraw it. Returns the reason and figures of a promotion; raises
    :class:`CanaryRolledBackError` for a withdrawal, :class:`DeployError` when it did not load or warm up."""
    from modelpkg.package import load_package

    package = load_package(package_dir)
    name = served_name or package.manifest.name
    path = normalized(package_dir)
    connect(address)
    current = load_spec()
    if name not in {p["name"] for p in current.packages}:
        raise OptiserveError(f"model {name!r} is not served: a canary runs beside a served model (deploy adds one)")
    with_canary = [
        {**p, "canary": {"path": path, "fraction": limits.fraction}} if p["name"] == name else p
        for p in current.packages
    ]
    staged = replace(current, packages=with_canary, generation=current.generation + 1)
    _change(current, staged, timeout_s)
    outcome, reason, figures = judge_canary(name, limits)
    decided: dict[str, Any] = {"model": name, "package": _expected([{"name": name, "path": path}])[name][0]}
    decided["outcome"] = outcome
    decided |= {"reason": reason.split(":")[0], "at": time.time()}
    if outcome == "promoted":
        promoted = [{"name": name, "path": path} if p["name"] == name else p for p in current.packages]
        final = replace(current, packages=promoted, previous=current.packages, rollout=decided)
    else:
        final = replace(current, rollout=decided)
    final = replace(final, generation=staged.generation + 1)
    since = time.time()
    apply(final)
    settled = wait_for(final, timeout_s, since)
    if not settled.ok:
        raise DeployError(f"the canary was {outcome.replace('_', ' ')} ({reason}), but {settled.reason}")
    if outcome != "promoted":
        raise CanaryRolledBackError(f"canary of {name} from {path} rolled back: {reason}")
    return reason, figures


def status(address: str = "auto") -> dict[str, Any]:
    """What the server serves and what each replica is doing."""
    connect(address)
    spec = load_spec()
    return {
        "url": spec.url,
        "generation": spec.generation,
        "packages": [{**p, "package": _expected([p])[p["name"]][0]} for p in spec.packages],
        "can_roll_back": spec.previous is not None,
        "replica_states": running_replicas(),
        "replicas": replica_states(),
    }
