"""``optiserve loadtest``: run a Locust file headless against a live server, bounded in time, and write a summary
that puts Locust's client-side numbers beside the server's own histograms, with plots and SLO checks.

Client numbers are Locust's final ones (``--json-file``, written as Locust exits; its stats CSV lags up to a
second). Headers, an API key and the user's own inputs file reach every Locust process through the variables of
``loadtests/flags.py``. With ``server_metrics=False`` (``--no-server-metrics``) the server's ``/metrics`` is
never read, so any server with the same API (TEI, Infinity, a plain Ray Serve app) gets the same run and report.

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

from loadtests import settings
from loadtests.payloads import read_payload, request_headers
from loadtests.scrape import histogram_delta, requests_by_code, scrape
from loadtests.stats import percentile

LOCUSTFILES = Path(__file__).resolve().parent
Api = Literal["embeddings", "kserve", "classify", "rerank"]
Shape = Literal["step", "ramp", "spike", "sweep"]
ROUTES: dict[str, str] = {
    "embeddings": "/v1/embeddings",
    "classify": "/v1/classify",
    "rerank": "/v1/rerank",
    "kserve": "/v2/models/{name}/infer",
}
ENDPOINT = ROUTES["embeddings"]
DEFAULT_LOCUSTFILE = LOCUSTFILES / "embeddings.py"
MAX_DURATION_S = 3600
STOP_TIMEOUT_S = 5
CPU_WARNING = "CPU usage above"  # what Locust logs when a load-generator process saturates its core
SETUP_SUFFIX = "(setup)"  # requests a Locust file names "... (setup)" are left out of the summary
PERCENTILES = (0.50, 0.66, 0.75, 0.80, 0.90, 0.95, 0.98, 0.99, 0.999, 0.9999, 1.0)  # Locust's own table


def default_label(prefix: str = "loadtest") -> str:
    """A label that does not overwrite the last run's files: ``loadtest-20261203-101500``."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


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
    rate_per_user: float | None = None  # target requests/s per user (wins over rate)
    seed: int = 0  # base seed of the payload draw
    workers: int = 0  # 0: one Locust process; N: a master and N workers
    env: dict[str, str] = field(default_factory=dict)  # shape settings (OPTISERVE_STAGES, …)
    slo_p99_ms: float | None = None
    max_error_rate: float | None = None
    plots: bool = True
    label: str = "run"
    headers: tuple[str, ...] = ()  # extra request headers, "Name: value"
    api_key: str | None = None  # sent as "Authorization: Bearer KEY"
    payload: Path | None = None  # the user's inputs (.txt one per line, .jsonl "text"); default: held-out corpus
    server_metrics: bool = True  # False: the server has no optiserve /metrics; client-side numbers only

    def __post_init__(self) -> None:
        if self.users < 1:
            raise ValueError(f"users must be >= 1, got {self.users}")
        if not 1 <= self.duration_s <= MAX_DURATION_S:
            raise ValueError(f"duration_s must be within 1..{MAX_DURATION_S}, got {self.duration_s}")
        if self.api not in ROUTES:
            raise ValueError(f"api must be one of {sorted(ROUTES)}, got {self.api!r}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        request_headers(list(self.headers), self.api_key)  # a malformed header is an error before Locust starts

    @property
    def json_prefix(self) -> Path:
        """Locust's ``--json-file``: its final numbers, written at exit (Locust appends ``.json``)."""
        return self.out_dir / f"{self.label}_locust_final"

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
    payload: str = "held-out corpus"
    header_names: list[str] = field(default_factory=list)  # names only: values (tokens) stay out of reports
    server_metrics: bool = True
    shape: str | None = None
    rate: float | None = None
    client_processes: int = 1
    client_saturated: bool = False
    client: dict[str, float] = field(default_factory=dict)
    server: dict[str, Any] = field(default_factory=dict)
    slo: dict[str, Any] = field(default_factory=dict)
    failure_reasons: list[dict[str, Any]] = field(default_factory=list)  # most frequent first
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
    return [*command, "--json-file", str(cfg.json_prefix)]


def final_stats(json_file: Path) -> dict[str, float]:
    """The run's client-side numbers from Locust's ``--json-file`` (written as Locust exits, so they agree with
    its final summary): every request entry but setup ones, aggregated as Locust's own "Aggregated" row."""
    try:
        entries = [e for e in json.loads(json_file.read_text()) if not e["name"].endswith(SETUP_SUFFIX)]
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"{json_file}: Locust's final stats are missing or unreadable ({exc})") from None
    times: dict[int, int] = {}
    for entry in entries:
        for ms, n in entry["response_times"].items():
            times[round(float(ms))] = times.get(round(float(ms)), 0) + n
    requests = sum(e["num_requests"] for e in entries)
    timed = requests - sum(e.get("num_none_requests", 0) for e in entries)
    failures = sum(e["num_failures"] for e in entries)
    span = max((e["last_request_timestamp"] or 0 for e in entries), default=0) - min(
        (e["start_time"] for e in entries), default=0
    )
    stats: dict[str, Any] = {
        "requests": float(requests),
        "failures": float(failures),
        "rps": requests / span if span > 0 else 0.0,
        "mean_ms": sum(e["total_response_time"] for e in entries) / timed if timed else float("nan"),
        "max_ms": float(max((e["max_response_time"] for e in entries), default=float("nan"))),
        "error_rate": failures / requests if requests else 0.0,
        "percentiles_ms": {_percent_key(q): percentile(times, q, timed) for q in PERCENTILES},
    }
    for q in (0.5, 0.95, 0.99):
        stats[f"p{round(q * 100)}_ms"] = stats["percentiles_ms"][_percent_key(q)]
    return stats


def failure_reasons(failures_csv: Path, limit: int = 3) -> list[dict[str, Any]]:
    """The most frequent failure messages of Locust's ``*_failures.csv`` (error text and count)."""
    try:
        with failures_csv.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        return []
    reasons: list[dict[str, Any]] = [{"error": _unwrap(row["Error"]), "count": int(row["Occurrences"])} for row in rows]
    return sorted(reasons, key=lambda r: -r["count"])[:limit]


def _unwrap(error: str) -> str:
    """``CatchResponseError('HTTP 403: …')`` (how Locust records a failure a task marked) as ``HTTP 403: …``."""
    prefix = "CatchResponseError("
    inner = error[len(prefix) : -1] if error.startswith(prefix) and error.endswith(")") else ""
    return inner[1:-1] if len(inner) >= 2 and inner[0] == inner[-1] and inner[0] in "'\"" else error


def _percent_key(q: float) -> str:
    return f"{q * 100:g}%"


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
    """Locust's environment: each request flag's variable (loadtests/flags.py), for master and workers alike
    (the API key travels here, not on the command line, where ``ps`` would show it)."""
    env = {**os.environ, settings.INPUTS.name: str(cfg.max_inputs), settings.SEED.name: str(cfg.seed), **cfg.env}
    env[settings.HEADERS.name] = "\n".join(cfg.headers)
    env[settings.API_KEY.name] = cfg.api_key or ""
    env[settings.PAYLOAD.name] = str(cfg.payload.resolve()) if cfg.payload else ""
    if cfg.model:
        env[settings.MODEL.name] = cfg.model
    if cfg.rate:
        env[settings.RATE.name] = str(cfg.rate)
        if not cfg.shape:  # fixed users: pace each at its share, whichever Locust process runs it
            env[settings.RATE_PER_USER.name] = str(cfg.rate / cfg.users)
    if cfg.rate_per_user:
        env[settings.RATE_PER_USER.name] = str(cfg.rate_per_user)
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
    from loadtests.ports import free_port

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
    """Run Locust against ``cfg.host``; write ``<label>.json``, ``.md`` and (with ``cfg.plots``) PNG plots. Without
    ``cfg.server_metrics`` the server's ``/metrics`` is never read and the summary has client-side numbers only."""
    if cfg.payload:
        read_payload(cfg.payload)  # an empty or unreadable file is a one-line error before Locust starts
    metrics_url = cfg.host.rstrip("/") + "/metrics"
    before = scrape(metrics_url) if cfg.server_metrics else {}
    started = time.monotonic()
    wait_locust(start_locust(cfg), cfg)
    after = scrape(metrics_url) if cfg.server_metrics else {}
    final = Path(f"{cfg.json_prefix}.json")
    client = final_stats(final)
    summary = LoadTestSummary(
        label=cfg.label,
        host=cfg.host,
        users=cfg.users,
        duration_s=cfg.duration_s if not cfg.shape else round(time.monotonic() - started),
        max_inputs=cfg.max_inputs,
        api=cfg.api,
        payload=str(cfg.payload) if cfg.payload else "held-out corpus",
        header_names=[name for name in request_headers(list(cfg.headers), cfg.api_key) if name != "Content-Type"],
        server_metrics=cfg.server_metrics,
        shape=cfg.shape,
        rate=cfg.rate,
        client_processes=max(1, cfg.workers),
        client_saturated=_client_saturated(cfg),
        client=client,
        server=_server_stats(before, after, ROUTES[cfg.api]) if cfg.server_metrics else {},
        slo=check_slo(cfg, client),
        failure_reasons=failure_reasons(Path(f"{cfg.csv_prefix}_failures.csv")) if client["failures"] else [],
    )
    json_path, md_path = cfg.out_dir / f"{cfg.label}.json", cfg.out_dir / f"{cfg.label}.md"
    summary.files = [str(p) for p in (json_path, md_path, final, Path(f"{cfg.csv_prefix}_stats.csv"))]
    if cfg.plots:
        from loadtests.plots import plot_run

        summary.files += [str(p) for p in plot_run(cfg.out_dir, cfg.label, summary.server)]
    json_path.write_text(json.dumps(asdict(summary), indent=2) + "\n", encoding="utf-8")
    md_path.write_text(render_summary(summary) + "\n", encoding="utf-8")
    return summary


def inputs_phrase(max_inputs: int, noun: str = "input") -> str:
    """``1 input per request`` or ``1..4 inputs per request``."""
    return f"1 {noun} per request" if max_inputs == 1 else f"1..{max_inputs} {noun}s per request"


CLIENT_LEGEND = {
    "requests": "requests Locust completed (Locust's final numbers, written as it exits)",
    "failures": "requests that were not HTTP 200 with one output per input",
    "req/s": "completed requests per second over the run",
    "p50 / p95 / p99 ms per request": "latency percentiles of one whole request, in milliseconds; client: "
    "from send to last byte received, as Locust measures it",
}
SERVER_LEGEND = {
    "server (ingress histogram)": "the server's own request-duration histogram for the route, read from /metrics "
    "before and after the run (quantiles interpolated within buckets); it counts requests Locust stopped waiting "
    "for at the end (in flight), so it may exceed the client's count by up to the number of users",
    "batches / items per batch": "dynamic batches the server ran and how many inputs each held",
    "queue wait": "time an input waited for its batch to start, in milliseconds",
    "batch inference": "time to run one dynamic batch (all its model calls), in milliseconds",
}


def _legend(entries: dict[str, str]) -> list[str]:
    return [f"- **{name}**: {meaning}" for name, meaning in entries.items()]


def _client_row(c: dict[str, Any]) -> str:
    return (
        f"| client (Locust) | {c['requests']:.0f} | {c['failures']:.0f} | {c['rps']:.1f} | {c['p50_ms']:.0f} | "
        f"{c['p95_ms']:.0f} | {c['p99_ms']:.0f} |"
    )


def _server_lines(srv: dict[str, Any]) -> tuple[str, list[str]]:
    """The server's row of the table, and its paragraph below it."""
    codes = srv["requests_by_code"]
    row = (
        f"| server (ingress histogram) | {sum(codes.values()):.0f} | "
        f"{sum(v for k, v in codes.items() if k != '200'):.0f} | — | "
        f"{srv['request_p50_ms']:.1f} | — | {srv['request_p99_ms']:.1f} |"
    )
    dist = ", ".join(f"{label}: {int(n)}" for label, n in srv.get("batch_size_distribution", []))
    text = [
        f"Server: {srv['batches']:.0f} batches, {srv['items']:.0f} items, mean items per batch "
        f"{srv['batch_size_mean']:.2f}, padding ratio {srv['padding_ratio_mean']:.2f}, queue wait p50 "
        f"{srv['queue_wait_p50_ms']:.1f} ms / p99 {srv['queue_wait_p99_ms']:.1f} ms per input, batch inference p50 "
        f"{srv['inference_p50_ms']:.1f} ms per batch.",
        "",
        f"Items-per-batch distribution (histogram buckets: batches): {dist or 'none'}",
    ]
    return row, text


def render_summary(s: LoadTestSummary) -> str:
    load = f"shape {s.shape}" if s.shape else f"{s.users} users" + (f" at {s.rate:g} req/s" if s.rate else "")
    sent = f"inputs from {s.payload}" + (f"; headers sent: {', '.join(s.header_names)}" if s.header_names else "")
    lines = [
        f"# Load test: {s.label}",
        "",
        f"{load}, {s.duration_s} s, {inputs_phrase(s.max_inputs)} ({s.api} API), against {s.host}; "
        f"{s.client_processes} Locust process(es); {sent}.",
        "",
        "| side | requests | failures | req/s | p50 ms per request | p95 ms per request | p99 ms per request |",
        "|---|---|---|---|---|---|---|",
        _client_row(s.client),
    ]
    if s.failure_reasons:
        reasons = "; ".join(f"{r['count']}x {r['error'][:200]}" for r in s.failure_reasons)
        lines += ["", f"Most frequent failures: {reasons}"]
    legend = dict(CLIENT_LEGEND)
    if s.server_metrics and s.server:
        row, text = _server_lines(s.server)
        lines += [row, "", *text]
        legend.update(SERVER_LEGEND)
    else:
        lines += ["", "Server-side numbers omitted: run with --no-server-metrics (the server's /metrics not read)."]
    lines += ["", *_legend(legend)]
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
