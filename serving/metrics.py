"""Prometheus metrics, shared by every replica process on a node through prometheus-client's multiprocess mode.

Each Ray Serve replica is its own process. The launcher gives all of them one ``PROMETHEUS_MULTIPROC_DIR``
(through the deployments' ``runtime_env``) before ``prometheus_client`` is imported there; the ingress's
``GET /metrics`` merges every process's files, so one scrape of the Serve HTTP port sees the whole node.
Without that variable (e.g. a plain Python session) metrics go to the process's default registry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prom_multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DEFAULT_METRICS_DIR = "/tmp/optiserve-metrics"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512, 1024)
TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
RATIO_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


NO_MODEL = {
    "model": "",
    "version": "",
    "package": "",
}  # labels of requests that reached no model (health, metrics, 404s)


@dataclass(frozen=True)
class Metrics:
    requests: Counter
    request_duration: Histogram
    inflight: Gauge
    queued_items: Gauge
    queue_wait: Histogram
    batch_size: Histogram
    batch_tokens: Histogram
    batch_padding_ratio: Histogram
    call_padded_tokens: Histogram
    inference_duration: Histogram
    model_info: Gauge
    rollout: Gauge
    cache_hits: Counter
    cache_misses: Counter
    cache_evictions: Counter
    cache_entries: Gauge
    cache_bytes: Gauge
    cached_request_duration: Histogram


@cache
def metrics() -> Metrics:
    """The process's metric objects (created once; not registered globally, so creation never collides)."""
    if directory := os.environ.get(MULTIPROC_ENV):
        os.makedirs(directory, exist_ok=True)  # a replica on a node where the directory does not exist yet
    model = ["model", "version", "package"]
    return Metrics(
        requests=Counter(
            "optiserve_requests",
            "HTTP requests answered, by route and status code.",
            [*model, "route", "code"],
            registry=None,
        ),
        request_duration=Histogram(
            "optiserve_request_duration_seconds",
            "Time from request received by the ingress to response.",
            [*model, "route"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        ),
        inflight=Gauge(
            "optiserve_inflight_requests",
            "HTTP requests being handled by the replicas on this node.",
            [],
            multiprocess_mode="livesum",
            registry=None,
        ),
        queued_items=Gauge(
            "optiserve_queued_items",
            "Inputs admitted and not yet answered (waiting for or in a batch).",
            model,
            multiprocess_mode="livesum",
            registry=None,
        ),
        queue_wait=Histogram(
            "optiserve_queue_wait_seconds",
            "Time a request waited in the replica before its batch started.",
            model,
            buckets=LATENCY_BUCKETS,
            registry=None,
        ),
        batch_size=Histogram(
            "optiserve_batch_size",
            "Items (inputs, not requests) in each dynamic batch.",
            model,
            buckets=BATCH_SIZE_BUCKETS,
            registry=None,
        ),
        batch_tokens=Histogram(
            "optiserve_batch_tokens",
            "Real (unpadded) tokens in each dynamic batch.",
            model,
            buckets=TOKEN_BUCKETS,
            registry=None,
        ),
        batch_padding_ratio=Histogram(
            "optiserve_batch_padding_ratio",
            "Share of computed tokens that were padding, per dynamic batch.",
            model,
            buckets=RATIO_BUCKETS,
            registry=None,
        ),
        call_padded_tokens=Histogram(
            "optiserve_model_call_padded_tokens",
            "Padded tokens (rows x width) in each model call; bounded by max_batch_tokens.",
            model,
            buckets=TOKEN_BUCKETS,
            registry=None,
        ),
        inference_duration=Histogram(
            "optiserve_inference_duration_seconds",
            "Time to tokenize and run one dynamic batch.",
            model,
            buckets=LATENCY_BUCKETS,
            registry=None,
        ),
        model_info=Gauge(
            "optiserve_model_info",
            "The package a replica serves (1; 0 once it was replaced).",
            [*model, "task", "runtime", "precision", "device", "chain"],
            multiprocess_mode="livemax",  # only replicas that exist: a replaced package's info goes away
            registry=None,
        ),
        rollout=Gauge(
            "optiserve_rollout_timestamp_seconds",
            "When the control plane last decided about a canary package (outcome promoted or rolled_back, and why).",
            ["model", "package", "outcome", "reason"],
            multiprocess_mode="max",
            registry=None,
        ),
        cache_hits=Counter("optiserve_cache_hits", "Inputs answered from the response cache.", model, registry=None),
        cache_misses=Counter(
            "optiserve_cache_misses", "Inputs looked up in the response cache and computed.", model, registry=None
        ),
        cache_evictions=Counter(
            "optiserve_cache_evictions",
            "Response cache entries dropped to stay within its bytes.",
            model,
            registry=None,
        ),
        cache_entries=Gauge(
            "optiserve_cache_entries",
            "Entries in the response caches.",
            model,
            multiprocess_mode="livesum",
            registry=None,
        ),
        cache_bytes=Gauge(
            "optiserve_cache_bytes",
            "Bytes held by the response caches.",
            model,
            multiprocess_mode="livesum",
            registry=None,
        ),
        cached_request_duration=Histogram(
            "optiserve_model_request_duration_seconds",
            "Time from a request reaching its model to its outputs, by cache: hit (every input from the cache) "
            "or miss (some computed).",
            [*model, "cache"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        ),
    )


def _forget_dead_processes(directory: str) -> None:
    """Drop live-gauge files of processes that are gone (a killed or replaced replica), so in-flight counts and
    model info describe the replicas that exist. Counters and histograms of dead processes are kept."""
    for path in Path(directory).glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            prom_multiprocess.mark_process_dead(int(pid), directory)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def exposition() -> bytes:
    """Text exposition of every process's metrics on this node (or of this process, outside multiprocess mode)."""
    if directory := os.environ.get(MULTIPROC_ENV):
        _forget_dead_processes(directory)
        registry = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    from prometheus_client import REGISTRY

    for metric in metrics().__dict__.values():  # register lazily, once, in single-process mode
        try:
            REGISTRY.register(metric)
        except ValueError:
            pass
    return generate_latest(REGISTRY)
