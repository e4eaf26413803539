"""The packages one replica serves, and how that set changes while it serves (upgrades, rollbacks, stopping).

Ray Serve calls :meth:`ServedModels.reconfigure` with the deployment's ``user_config``. Besides batching keys (at
the top level for every model, under ``models: {name: {...}}`` per model) it may carry what the control plane
(:mod:`serving.control`) decides:

- ``packages``: ``[{"path": ..., "name": ...}]``, the package set. A model whose package changed gets a new
  :class:`~serving.replica.ModelRunner` beside the running one: loaded, verified and warmed up off the event loop
  while the old one serves; then new requests go to it, the old one finishes every request it admitted (drain)
  and is released. A request resolves its runner once, so one request is never answered by two packages. When
  the new package fails to load or warm up, the old one keeps serving and the failure is reported.
- ``generation``: the control plane's change counter, reported back so it knows when every replica applied it.
- ``draining``: the server is stopping; readiness answers 503 while requests are still served.

The first ``reconfigure`` (Ray calls it right after the constructor, before the replica takes traffic) applies
the set synchronously: a replica is never ready before its models are loaded and warm. Each replica reports its
state to Ray's key-value store (:func:`serving.control.replica_key`) on every change and every health check.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import logging
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from modelpkg.errors import OptiserveError
from modelpkg.package import read_manifest
from serving.errors import InputTooLongError, run_error
from serving.replica import CacheUse, InferResult, ModelRunner, node_tag, package_id

log = logging.getLogger("optiserve")
T = TypeVar("T")
CONTROL_KEYS = ("packages", "generation", "draining", "rollout", "models")
AGREEMENT_INPUTS = 256  # held-out inputs a canary and the stable package are compared on


def cache_use(cache_control: str | None) -> CacheUse:
    """How a request's ``Cache-Control`` lets it use the response cache: ``no-store`` neither reads nor stores,
    ``no-cache`` computes afresh (and stores the result), anything else reads it."""
    directives = {part.strip().lower() for part in (cache_control or "").split(",")}
    if "no-store" in directives:
        return "bypass"
    return "refresh" if "no-cache" in directives else "use"


@dataclass(frozen=True)
class Slot:
    """One model of the set: the name clients use, the package directory that serves it, and optionally a canary
    package that takes ``fraction`` of its new requests."""

    name: str
    path: str
    canary: str | None = None
    fraction: float = 0.0

    @classmethod
    def from_config(cls, entry: dict[str, Any]) -> Slot:
        canary = entry.get("canary") or {}
        fraction = float(canary.get("fraction", 0.0))
        if canary and not 0.0 < fraction < 1.0:
            raise ValueError(f"packages: the canary of {entry['name']!r} takes a fraction in (0, 1), got {fraction}")
        return cls(entry["name"], str(entry["path"]), canary.get("path"), fraction)


@dataclass
class ModelState:
    """What a replica reports for one model."""

    serving: dict[str, Any] | None = None
    canary: dict[str, Any] | None = None  # the canary package, its share of requests and its agreement
    loading: dict[str, Any] | None = None
    draining: list[str] = field(default_factory=list)
    failed: dict[str, Any] | None = None
    last_change: dict[str, float] = field(default_factory=dict)  # load_s, warm_s, drain_s of the last swap


def slots_from(package_dirs: list[str], served_names: list[str | None] | None) -> list[Slot]:
    """The set the constructor's arguments name (a name left out is the package's own)."""
    names = list(served_names or []) + [None] * (len(package_dirs) - len(served_names or []))
    return [Slot(name or read_manifest(path).name, str(path)) for path, name in zip(package_dirs, names, strict=True)]


def _describe(runner: ModelRunner) -> dict[str, Any]:
    return {"package": runner.package, "version": runner.manifest.version, "path": runner.path}


class ServedModels:
    """The packages one replica serves, by model name, each with its own batch queue."""

    def __init__(
        self, package_dirs: list[str], threads: int | None = None, served_names: list[str | None] | None = None
    ) -> None:
        from modelpkg.settings import DRAIN_S
        from serving.limits import LIMITS

        self.limits = LIMITS  # this process's limits (methods of Serve's ingress class must not read globals)
        self.drain_s = DRAIN_S.get()
        self.threads = threads
        self.models: dict[str, ModelRunner] = {}
        self.canaries: dict[str, ModelRunner] = {}
        self.states: dict[str, ModelState] = {}
        self.generation = 0
        self.draining = False
        self._target: dict[str, Slot] = {}
        self._overrides: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
        self._configured = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._loading: set[tuple[str, str]] = set()  # (model, path) being loaded: a repeated target waits for it
        for slot in slots_from(package_dirs, served_names):
            if slot.name in self._target:
                raise ValueError(f"two packages serve the model name {slot.name!r}; names must be unique")
            self._target[slot.name] = slot
            self._serve(ModelRunner(slot.path, threads, slot.name))

    # -- configuration -------------------------------------------------------------------------------------------

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = dict(user_config or {})
        packages = config.pop("packages", None)
        self.generation = int(config.pop("generation", self.generation))
        self.draining = bool(config.pop("draining", False))
        per_model = config.pop("models", None) or {}
        rollout = config.pop("rollout", None)
        target = dict(self._target)
        if packages is not None:
            target = {p["name"]: Slot.from_config(p) for p in packages}
        unknown = sorted(set(per_model) - set(target))
        if unknown:
            raise ValueError(f"user_config.models names {unknown}, not served here ({sorted(target)})")
        self._overrides = (config, per_model)
        for runner in [*self.models.values(), *self.canaries.values()]:
            runner.apply(self._settings_for(runner.name))
        self._target = target
        if rollout:
            record_rollout(rollout)
        work = self._work_towards(target)
        if not self._configured:  # not taking traffic yet: be ready only once every model is
            for change in work:
                await change
            self._configured = True
        else:
            for change in work:
                self._spawn(change)
        self.report()

    def _work_towards(self, target: dict[str, Slot]) -> list[Any]:
        """The changes (coroutines) that take this replica from what it serves to ``target``."""
        work = [
            self._change(slot)
            for slot in target.values()
            if self._differs(slot.name, slot.path) and (slot.name, slot.path) not in self._loading
        ]
        work += [
            self._load_canary(slot)
            for slot in target.values()
            if slot.canary
            and self._differs(slot.name, slot.canary, True)
            and (slot.name, slot.canary) not in self._loading
        ]
        for name in [n for n in self.canaries if not target.get(n) or target[n].canary is None]:
            if (stable := target.get(name)) is None or self.canaries[name].path != stable.path:  # else: promoted
                work.append(self._retire(self.canaries.pop(name), self.states.get(name)))
        for name in [n for n in self.models if n not in target]:
            work.append(self._retire(self.models.pop(name)))
            self.states.pop(name, None)
        return work

    def _settings_for(self, name: str) -> dict[str, Any]:
        common, per_model = self._overrides
        return {**common, **per_model.get(name, {})}

    def _differs(self, name: str, path: str, canary: bool = False) -> bool:
        """Whether the model (or its canary) is served from another package than the one at ``path``."""
        runner = (self.canaries if canary else self.models).get(name)
        if runner is None or runner.path != path:
            return True
        try:  # the same directory may hold a rebuilt package: compare identities (reads only the manifest)
            return package_id(read_manifest(path)) != runner.package
        except OptiserveError:
            return True  # let the load report what is wrong with it

    def pick(self, name: str, version: str | None = None) -> ModelRunner | None:
        """The runner that answers a request for ``name``: the canary for its share of requests, else the stable
        package; with ``version`` (a manifest version or package id), the one that has it."""
        stable, canary = self.models.get(name), self.canaries.get(name)
        if version is not None:
            found = [r for r in (stable, canary) if r is not None and version in (r.manifest.version, r.package)]
            return found[0] if found else None
        slot = self._target.get(name)
        if canary is not None and slot is not None and random.random() < slot.fraction:
            return canary
        return stable

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- changing a model's package ------------------------------------------------------------------------------

    async def _load(self, name: str, path: str) -> tuple[ModelRunner, float] | None:
        """A warm runner for the package at ``path`` (and the seconds it took), loaded off the event loop; None
        (reported) when it fails to load or warm up. Raises instead while the replica is not serving yet."""
        state = self.states.setdefault(name, ModelState())
        state.loading = {"path": path, "since": time.time()}
        state.failed = None
        self.report()
        started = time.perf_counter()
        self._loading.add((name, path))
        try:
            runner = await _in_own_thread(ModelRunner, path, self.threads, name)
            runner.apply(self._settings_for(name))
        except Exception as exc:
            message = f"{path} did not load and warm up: {' '.join(str(exc).split()) or type(exc).__name__}"
            log.error("%s: %s", name, message)
            state.loading = None
            state.failed = {"path": path, "error": message[:2000], "at": time.time()}
            self.report()
            if not self._configured:
                raise
            return None
        finally:
            self._loading.discard((name, path))
        state.loading = None
        return runner, time.perf_counter() - started

    async def _load_canary(self, slot: Slot) -> None:
        """Load the canary package beside the stable one and measure how closely their outputs agree."""
        assert slot.canary is not None
        loaded = await self._load(slot.name, slot.canary)
        if loaded is None:
            return
        runner, load_s = loaded
        stable = self.models.get(slot.name)
        if self._target.get(slot.name) != slot or stable is None:  # superseded while it loaded
            runner.close()
            return
        measured = await _in_own_thread(agreement, stable, runner)
        self.canaries[slot.name] = runner
        state = self.states[slot.name]
        state.canary = {**_describe(runner), "agreement": measured, "load_and_warm_up_s": round(load_s, 3)}
        log.info("%s: canary %s takes %.0f%% of requests", slot.name, runner.package, 100 * slot.fraction)
        self.report()

    async def _change(self, slot: Slot) -> None:
        """Serve ``slot``'s package instead of the running one: the canary of that package is promoted as it is;
        otherwise a new runner is loaded and warmed up beside the old one. Then the old one drains."""
        state = self.states.setdefault(slot.name, ModelState())
        canary = self.canaries.get(slot.name)
        if canary is not None and not self._differs(slot.name, slot.path, canary=True):
            runner, load_s = self.canaries.pop(slot.name), 0.0
            state.canary = None
        else:
            loaded = await self._load(slot.name, slot.path)
            if loaded is None:
                return
            runner, load_s = loaded
            if self._target.get(slot.name, Slot("", "")).path != slot.path:  # superseded while it loaded
                runner.close()
                return
        old = self.models.get(slot.name)
        self._serve(runner)
        state.last_change = {"load_and_warm_up_s": round(load_s, 3)}
        log.info(
            "%s: serving package %s (%s); %.1f s to load and warm up", slot.name, runner.package, slot.path, load_s
        )
        self.report()
        if old is not None:
            await self._retire(old, state)

    def _serve(self, runner: ModelRunner) -> None:
        runner.apply(self._settings_for(runner.name))
        self.models[runner.name] = runner
        state = self.states.setdefault(runner.name, ModelState())
        state.serving = _describe(runner)

    async def _retire(self, runner: ModelRunner, state: ModelState | None = None) -> None:
        """Let ``runner`` answer what it admitted (up to ``OPTISERVE_DRAIN_S``), then release it."""
        if state is not None and state.canary and state.canary["package"] == runner.package:
            state.canary = None
        if state is not None:
            state.draining.append(runner.package)
            self.report()
        started = time.perf_counter()
        drained = await runner.drain(self.drain_s)
        runner.close()
        # The runner and its batcher refer to each other: a collection frees the model's memory now, not at some
        # later one; soon, once the task that holds the runner has ended (once per change). Then the trim.
        asyncio.get_running_loop().call_later(0.1, _release_memory)
        if not drained:
            log.warning("%s: package %s held requests past %g s; released", runner.name, runner.package, self.drain_s)
        if state is not None:
            state.draining.remove(runner.package)
            state.last_change["drain_s"] = round(time.perf_counter() - started, 3)
            self.report()

    # -- what this replica reports -------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        models = {}
        for name, state in self.states.items():
            stable, canary = self.models.get(name), self.canaries.get(name)
            models[name] = {
                "serving": state.serving and {**state.serving, "traffic": stable.traffic.summary() if stable else {}},
                "canary": state.canary and {**state.canary, "traffic": canary.traffic.summary() if canary else {}},
                "loading": state.loading,
                "draining": list(state.draining),
                "failed": state.failed,
                "last_change": state.last_change,
            }
        return {
            "generation": self.generation,
            "draining": self.draining,
            "node": node_tag(),
            "pid": os.getpid(),
            "updated": time.time(),
            "models": models,
        }

    def report(self) -> None:
        """Write :meth:`snapshot` to Ray's key-value store (nothing outside a Serve replica)."""
        from serving.control import publish_replica_state

        publish_replica_state(json.dumps(self.snapshot()))

    def names(self, task: str | None = None) -> list[str]:
        return [name for name, runner in self.models.items() if task is None or runner.manifest.task == task]

    def stalled(self) -> str | None:
        """Why a model of this replica is stuck (readiness then answers 503), or None."""
        for runner in [*self.models.values(), *self.canaries.values()]:
            if reason := runner.stalled():
                return reason
        return None

    # -- requests ------------------------------------------------------------------------------------------------

    async def infer(
        self,
        runner: ModelRunner,
        items: list[Any],
        cache_control: str | None = None,
        truncate: bool | None = None,
        span: Any = None,
    ) -> InferResult:
        """Run one request's items on ``runner`` (every protocol's requests come here): an over-long text is a 422
        unless the request or the server's policy truncates; a failure is a declared error or a logged 500.
        ``span``: the request's trace span (:mod:`serving.tracing`), given its items and tokens."""
        if runner.manifest.takes_images:
            limits = self.limits
            items = await runner.decode_images(items, limits.max_image_pixels, limits.image_decode_timeout_s)
        encoder = runner.pipeline.encoder
        reject = not truncate if truncate is not None else self.limits.on_overflow == "reject"
        if encoder is not None and reject and (too_long := encoder.too_long(items)):
            raise InputTooLongError(
                f"input: item {too_long[0]} is longer than the model's {encoder.max_length} tokens "
                f"({'the request said truncate: false' if truncate is False else 'this server does not truncate'})"
            )
        try:
            result = await runner.infer(items, cache_use(cache_control), span)
        except Exception as exc:  # noqa: BLE001 -- every failure becomes a declared answer (and is logged there)
            raise run_error(exc) from None
        if span is not None:
            span.set_attributes({"optiserve.items": len(items), "optiserve.tokens": result.tokens})
        return result

    async def check_health(self) -> None:
        """Raise (so Ray Serve restarts the replica) if any model's runtime can no longer compute."""
        for runner in [*self.models.values(), *self.canaries.values()]:
            await runner.check_health()
        self.report()

    def __del__(self) -> None:
        from serving.control import withdraw_replica_state

        withdraw_replica_state()


def _release_memory() -> None:
    """Collect the released model, then hand the freed memory back to the system (glibc keeps freed memory in its
    arenas: without the trim a replica stays a model larger after its first change)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        pass


async def _in_own_thread(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` on a thread of its own that ends with it (``asyncio.to_thread``'s pool keeps its
    threads: a replica would hold one more thread after each change)."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="optiserve-load")
    try:
        return await asyncio.get_running_loop().run_in_executor(executor, function, *args)
    finally:
        executor.shutdown(wait=False)


def agreement(stable: ModelRunner, canary: ModelRunner) -> dict[str, Any] | None:
    """How closely a canary's outputs agree with the stable package's on held-out inputs, as this replica serves
    them: row-wise cosine (mean, min) and, for classifiers, top-1 agreement. None for a canary of another source
    model (its outputs are not expected to agree) or a tensor model (no held-out inputs ship for it)."""
    import numpy as np

    from corpus import load_split

    if stable.manifest.source.sha256 != canary.manifest.source.sha256 or not stable.manifest.takes_text:
        return None
    texts: list[Any] = load_split("heldout")[:AGREEMENT_INPUTS]
    if stable.manifest.task == "rerank":  # each sentence's first half as the query for the sentence
        texts = [(text[: len(text) // 2], text) for text in texts]
    a = stable.pipeline.run_as_served(texts, stable.settings)
    b = canary.pipeline.run_as_served(texts, canary.settings)
    if a.shape != b.shape:
        return {"score": 0.0, "judged_by": "shape", "samples": len(texts), "note": f"{a.shape} vs {b.shape}"}
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = np.where(norms > 0, (a * b).sum(axis=1) / np.maximum(norms, 1e-12), 1.0)
    result: dict[str, Any] = {
        "cosine_mean": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
        "samples": len(texts),
    }
    if stable.manifest.task == "classification":
        result["top1_agreement"] = float((a.argmax(axis=1) == b.argmax(axis=1)).mean())
    result["judged_by"] = "top1_agreement" if "top1_agreement" in result else "cosine_mean"
    result["score"] = result[result["judged_by"]]
    return result


def record_rollout(rollout: dict[str, Any]) -> None:
    """The control plane's last decision about a canary, as a metric every replica exposes."""
    from serving.metrics import metrics

    labels = {k: str(rollout.get(k, "")) for k in ("model", "package", "outcome", "reason")}
    metrics().rollout.labels(**labels).set(float(rollout.get("at", time.time())))
