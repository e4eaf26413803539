"""``optiserve loadtest``: run a Locust file headless against a live server, bounded in time, and write a summary
that puts Locust's client-side numbers beside the server's own histograms, with plots and SLO checks.

Locust runs as its own process (gevent's monkey-patching does not mix with Ray or asyncio in one process); with
``workers`` > 0 as a master and that many workers on 127.0.0.1, when one load-generator core is the limit.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from loadtests.payloads import INPUTS_ENV, MODEL_ENV, RATE_ENV, RATE_PER_USER_ENV
from loadtests.scrape import histogram_delta, requests_by_code, scrape

LOCUSTFILES = Path(__file__).resolve().parent
Api = Literal["embeddings", "kserve", "classify"]
Shape = Literal["step", "ramp", "spike", "sweep"]
ROUTES: dict[str, str] = {
    "embeddings": "/v1/embeddings",
    "classify": "/v1/classify",
    "kserve": "/v2/models/{name}/infer",
}
ENDPOINT = ROUTES["embeddings"]
DEFAULT_LOCUSTFILE = LOCUSTFILES / "embeddings.py"
MAX_DURATION_S = 3600
STOP_TIMEOUT_S = 5
CPU_WARNING = "CPU usage above"  # what Locust logs when a load-generator process saturates its core


@dataclass(frozen=True)
class LoadTestConfig:
    host: str
    out_dir: Path
    users: int = 8
    spawn_rate: float = 0.0  # 0: all users at once
    duration_s: int = 20  # with a shape: the upper bound of the whole run
    max_inputs: int = 1
    model: str | None = None
    api: Api = "embeddings"
    shape: Shape | None = None
    rate: float | None = None  # target requests/s over all users (default: closed loop)
    workers: int = 0  # 0: one Locust process; N: a master and N workers
    env: dict[str, str] = field(default_factory=dict)  # shape settings (OPTISERVE_STAGES, …)
    slo_p99_ms: float | None = None
    max_error_rate: float | None = None
    plots: bool = True
    label: str = "run"

    def __post_init__(self) -> None:
        if self.users < 1:
            raise ValueError(f"users must be >= 1, got {self.users}")
        if not 1 <= self.duration_s <= MAX_DURATION_S:
            raise ValueError(f"duration_s must be within 1..{MAX_DURATION_S}, got {self.duration_s}")
        if self.api not in ROUTES:
            raise ValueError(f"api must be one of {sorted(ROUTES)}, got {self.api!r}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")

    @property
    def locustfiles(self) -> str:
        files = [str(LOCUSTFILES / f"{self.api}.py")]
        if self.shape:
            files.append(str(LOCUSTFILES / f"shape_{self.shape}.py"))
        return ",".join(files)

    @property
    def csv_prefix(self) -> Path:
        return self.out_dir / f"{self.label}_locust"


@dataclass
class LoadTestSummary:
    label: str
    host: str
    users: int
    duration_s: int
    max_inputs: int
    api: str = "embeddings"
    shape: str | None = None
    rate: float | None = None
    client_processes: int = 1
    client_saturated: bool = False
    client: dict[str, float] = field(default_factory=dict)
    server: dict[str, Any] = field(default_factory=dict)
    slo: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    @property
    def failures(self) -> int:
        return int(self.client.get("failures", 0))

    @property
    def slo_broken(self) -> bool:
        return bool(self.slo.get("violations"))


def _locust_command(cfg: LoadTestConfig, role: list[str]) -> list[str]:
    command = [sys.executable, "-m", "locust", "-f", cfg.locustfiles, "--loglevel", "WARNING", *role]
    if "--worker" in role:
        return command
    command += ["--headless", "--host", cfg.host, "-t", f"{cfg.duration_s}s", "--stop-timeout", str(STOP_TIMEOUT_S)]
    if not cfg.shape:
        command += ["-u", str(cfg.users), "-r", str(cfg.spawn_rate or cfg.users)]
    command += ["--csv", str(cfg.csv_prefix), "--csv-full-history", "--only-summary", "--exit-code-on-error", "0"]
    return command


def client_stats(stats_csv: Path) -> dict[str, float]:
    with stats_csv.open(newline="") as fh:
        rows = {row["Name"]: row for row in csv.DictReader(fh)}
    row = rows.get("Aggregated") or next(iter(rows.values()), None)
    if row is None:
        raise RuntimeError(f"{stats_csv} has no Aggregated row; did Locust send any request?")

    def num(key: str) -> float:
        value = row.get(key, "")
        return float(value) if value not in ("", "N/A") else float("nan")

    stats = {
        "requests": num("Request Count"),
        "failures": num("Failure Count"),
        "rps": num("Requests/s"),
        "p50_ms": num("50%"),
        "p95_ms": num("95%"),
        "p99_ms": num("99%"),
        "mean_ms": num("Average Response Time"),
        "max_ms": num("Max Response Time"),
    }
    stats["error_rate"] = stats["failures"] / stats["requests"] if stats["requests"] else 0.0
    stats["percentiles_ms"] = {  # type: ignore[assignment]
        key: num(key) for key in ("50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%")
    }
    return stats


def _server_stats(before: dict, after: dict, route: str) -> dict[str, Any]:
    latency = histogram_delta(before, after, "optiserve_request_duration_seconds", {"route": route})
    queue = histogram_delta(before, after, "optiserve_queue_wait_seconds")
    inference = histogram_delta(before, after, "optiserve_inference_duration_seconds")
    batch = histogram_delta(before, after, "optiserve_batch_size")
    padding = histogram_delta(before, after, "optiserve_batch_padding_ratio")
    return {
        "requests_by_code": requests_by_code(before, after, route),
        "request_p50_ms": latency.quantile(0.5) * 1e3,
        "request_p99_ms": latency.quantile(0.99) * 1e3,
        "queue_wait_p50_ms": queue.quantile(0.5) * 1e3,
        "queue_wait_p99_ms": queue.quantile(0.99) * 1e3,
        "inference_p50_ms": inference.quantile(0.5) * 1e3,
        "batches": batch.count,
        "items": batch.total,
        "batch_size_mean": batch.mean,
        # Upper bound of the bucket holding the largest batch.
        "batch_size_max_bucket": min((b for b, c in batch.buckets if c >= batch.count), default=0.0),
        "batch_size_distribution": batch.distribution(),
        "padding_ratio_mean": padding.mean,
    }


def _env(cfg: LoadTestConfig) -> dict[str, str]:
    env = {**os.environ, INPUTS_ENV: str(cfg.max_inputs), **cfg.env}
    if cfg.model:
        env[MODEL_ENV] = cfg.model
    if cfg.rate:
        env[RATE_ENV] = str(cfg.rate)
        if not cfg.shape:  # fixed users: pace each at its share, whichever Locust process runs it
            env[RATE_PER_USER_ENV] = str(cfg.rate / cfg.users)
    return env


def _log_path(cfg: LoadTestConfig, role: str = "") -> Path:
    return cfg.out_dir / f"{cfg.label}_locust{role}.log"


@dataclass
class LocustProcesses:
    """The Locust process (or master) the run waits on, and any workers."""

    main: subprocess.Popen[str]
    workers: list[subprocess.Popen[str]] = field(default_factory=list)


def start_locust(cfg: LoadTestConfig) -> LocustProcesses:
    """Start Locust headless in its own process(es); it stops by itself after ``cfg.duration_s``. Output goes to
    log files, not pipes: an unread pipe would stall a long run."""
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    env = _env(cfg)
    if not cfg.workers:
        with _log_path(cfg).open("w") as log:
            proc = subprocess.Popen(_locust_command(cfg, []), env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        return LocustProcesses(proc)
    from serving.ports import free_port

    port = str(free_port())
    master_role = ["--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", port]
    master_role += ["--expect-workers", str(cfg.workers)]
    with _log_path(cfg).open("w") as log:
        master = subprocess.Popen(
            _locust_command(cfg, master_role), env=env, stdout=log, stderr=subprocess.STDOUT, text=True
        )
    workers = []
    for index in range(cfg.workers):
        role = ["--worker", "--master-host", "127.0.0.1", "--master-port", port]
        with _log_path(cfg, f"-worker{index}").open("w") as log:
            workers.append(
                subprocess.Popen(_locust_command(cfg, role), env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
            )
    return LocustProcesses(master, workers)


def wait_locust(procs: LocustProcesses, cfg: LoadTestConfig) -> None:
    limit = cfg.duration_s + STOP_TIMEOUT_S + 60
    try:
        procs.main.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        procs.main.kill()
        procs.main.wait()
        raise RuntimeError(f"locust did not stop within {limit} s; see {_log_path(cfg)}") from None
    finally:
        for worker in procs.workers:  # workers quit when the master does; make sure
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    if procs.main.returncode != 0:
        tail = _log_path(cfg).read_text(errors="replace")[-2000:]
        raise RuntimeError(f"locust exited with {procs.main.returncode}:\n{tail}")


def _client_saturated(cfg: LoadTestConfig) -> bool:
    logs = cfg.out_dir.glob(f"{cfg.label}_locust*.log")
    return any(CPU_WARNING in path.read_text(errors="replace") for path in logs)


def goodput_rps(client: dict[str, Any], slo_p99_ms: float) -> float:
    """Requests/s answered within ``slo_p99_ms``: throughput times the largest share of requests Locust's
    percentile table puts at or under the SLO (a lower bound; 0 if even the median is slower, or on failures)."""
    if client.get("failures"):
        return 0.0
    share = max(
        (float(key.rstrip("%")) / 100 for key, ms in client.get("percentiles_ms", {}).items() if ms <= slo_p99_ms),
        default=0.0,
    )
    return float(client["rps"]) * share


def check_slo(cfg: LoadTestConfig, client: dict[str, float]) -> dict[str, Any]:
    """Which of the run's service-level objectives it broke (client-side p99, error rate)."""
    violations = []
    if cfg.slo_p99_ms is not None and not client["p99_ms"] <= cfg.slo_p99_ms:
        violations.append(f"p99 {client['p99_ms']:.0f} ms > SLO {cfg.slo_p99_ms:g} ms")
    if cfg.max_error_rate is not None and client["error_rate"] > cfg.max_error_rate:
        violations.append(f"error rate {client['error_rate']:.3%} > {cfg.max_error_rate:.3%}")
    return {"p99_ms": cfg.slo_p99_ms, "max_error_rate": cfg.max_error_rate, "violations": violations}


def run_loadtest(cfg: LoadTestConfig) -> LoadTestSummary:
    """Run Locust against ``cfg.host``; write ``<label>.json``, ``.md`` and (with ``cfg.plots``) PNG plots."""
    metrics_url = cfg.host.rstrip("/") + "/metrics"
    route = ROUTES[cfg.api]
    before = scrape(metrics_url)
    started = time.monotonic()
    wait_locust(start_locust(cfg), cfg)
    after = scrape(metrics_url)
    client = client_stats(Path(f"{cfg.csv_prefix}_stats.csv"))
    summary = LoadTestSummary(
        label=cfg.label,
        host=cfg.host,
        users=cfg.users,
        duration_s=cfg.duration_s if not cfg.shape else round(time.monotonic() - started),
        max_inputs=cfg.max_inputs,
        api=cfg.api,
        shape=cfg.shape,
        rate=cfg.rate,
        client_processes=max(1, cfg.workers),
        client_saturated=_client_saturated(cfg),
        client=client,
        server=_server_stats(before, after, route),
        slo=check_slo(cfg, client),
    )
    json_path, md_path = cfg.out_dir / f"{cfg.label}.json", cfg.out_dir / f"{cfg.label}.md"
    summary.files = [str(p) for p in (json_path, md_path, Path(f"{cfg.csv_prefix}_stats.csv"))]
    if cfg.plots:
        from loadtests.plots import plot_run

        summary.files += [str(p) for p in plot_run(cfg.out_dir, cfg.label, summary.server)]
    json_path.write_text(json.dumps(asdict(summary), indent=2) + "\n", encoding="utf-8")
    md_path.write_text(render_summary(summary) + "\n", encoding="utf-8")
    return summary


def render_summary(s: LoadTestSummary) -> str:
    c, srv = s.client, s.server
    dist = ", ".join(f"{label}: {int(n)}" for label, n in srv.get("batch_size_distribution", []))
    load = f"shape {s.shape}" if s.shape else f"{s.users} users" + (f" at {s.rate:g} req/s" if s.rate else "")
    lines = [
        f"# Load test: {s.label}",
        "",
        f"{load}, {s.duration_s} s, 1..{s.max_inputs} inputs per request ({s.api} API), against {s.host}; "
        f"{s.client_processes} Locust process(es).",
        "",
        "| side | requests | failures | req/s | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
        f"| client (Locust) | {c['requests']:.0f} | {c['failures']:.0f} | {c['rps']:.1f} | {c['p50_ms']:.0f} | "
        f"{c['p95_ms']:.0f} | {c['p99_ms']:.0f} |",
        f"| server (ingress histogram) | {sum(srv['requests_by_code'].values()):.0f} | "
        f"{sum(v for k, v in srv['requests_by_code'].items() if k != '200'):.0f} | — | "
        f"{srv['request_p50_ms']:.1f} | — | {srv['request_p99_ms']:.1f} |",
        "",
        f"Server: {srv['batches']:.0f} batches, {srv['items']:.0f} items, mean batch size "
        f"{srv['batch_size_mean']:.2f}, padding ratio {srv['padding_ratio_mean']:.2f}, queue wait p50 "
        f"{srv['queue_wait_p50_ms']:.1f} ms / p99 {srv['queue_wait_p99_ms']:.1f} ms, batch inference p50 "
        f"{srv['inference_p50_ms']:.1f} ms.",
        "",
        f"Batch-size distribution (items per batch): {dist or 'none'}",
    ]
    if s.client_saturated:
        lines += [
            "",
            "**Warning:** Locust reported its CPU above 90%: the client limited this run; use more workers.",
        ]
    if s.slo.get("violations"):
        lines += ["", "**SLO broken:** " + "; ".join(s.slo["violations"])]
    elif s.slo.get("p99_ms") is not None or s.slo.get("max_error_rate") is not None:
        lines += ["", "SLO held."]
    pngs = [Path(f).name for f in s.files if f.endswith(".png")]
    if pngs:
        lines += ["", *(f"![{name}]({name})" for name in pngs)]
    return "\n".join(lines)
