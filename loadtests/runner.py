"""``optiserve loadtest``: run a Locust file headless against a live server, bounded in time, and write a summary
that puts Locust's client-side numbers beside the server's own histograms.

Locust runs as its own process: gevent's monkey-patching does not mix with Ray or asyncio in one process.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtests.payloads import INPUTS_ENV, MODEL_ENV
from loadtests.scrape import histogram_delta, requests_by_code, scrape

LOCUSTFILES = Path(__file__).resolve().parent
DEFAULT_LOCUSTFILE = LOCUSTFILES / "embeddings.py"
ENDPOINT = "/v1/embeddings"
MAX_DURATION_S = 3600
STOP_TIMEOUT_S = 5


@dataclass(frozen=True)
class LoadTestConfig:
    host: str
    out_dir: Path
    users: int = 8
    spawn_rate: float = 0.0  # 0: all users at once
    duration_s: int = 20
    max_inputs: int = 1
    model: str | None = None
    locustfile: Path = DEFAULT_LOCUSTFILE
    label: str = "run"

    def __post_init__(self) -> None:
        if self.users < 1:
            raise ValueError(f"users must be >= 1, got {self.users}")
        if not 1 <= self.duration_s <= MAX_DURATION_S:
            raise ValueError(f"duration_s must be within 1..{MAX_DURATION_S}, got {self.duration_s}")


@dataclass
class LoadTestSummary:
    label: str
    host: str
    users: int
    duration_s: int
    max_inputs: int
    client: dict[str, float] = field(default_factory=dict)
    server: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    @property
    def failures(self) -> int:
        return int(self.client.get("failures", 0))


def _locust_command(cfg: LoadTestConfig, csv_prefix: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(cfg.locustfile),
        "--headless",
        "--host",
        cfg.host,
        "-u",
        str(cfg.users),
        "-r",
        str(cfg.spawn_rate or cfg.users),
        "-t",
        f"{cfg.duration_s}s",
        "--stop-timeout",
        str(STOP_TIMEOUT_S),
        "--csv",
        str(csv_prefix),
        "--csv-full-history",
        "--only-summary",
        "--exit-code-on-error",
        "0",
        "--loglevel",
        "WARNING",
    ]


def client_stats(stats_csv: Path) -> dict[str, float]:
    with stats_csv.open(newline="") as fh:
        rows = {row["Name"]: row for row in csv.DictReader(fh)}
    row = rows.get("Aggregated") or rows.get(ENDPOINT)
    if row is None:
        raise RuntimeError(f"{stats_csv} has no Aggregated row; did Locust send any request?")

    def num(key: str) -> float:
        value = row.get(key, "")
        return float(value) if value not in ("", "N/A") else float("nan")

    return {
        "requests": num("Request Count"),
        "failures": num("Failure Count"),
        "rps": num("Requests/s"),
        "p50_ms": num("50%"),
        "p95_ms": num("95%"),
        "p99_ms": num("99%"),
        "mean_ms": num("Average Response Time"),
        "max_ms": num("Max Response Time"),
    }


def _server_stats(before: dict, after: dict) -> dict[str, Any]:
    latency = histogram_delta(before, after, "optiserve_request_duration_seconds", {"route": ENDPOINT})
    queue = histogram_delta(before, after, "optiserve_queue_wait_seconds")
    inference = histogram_delta(before, after, "optiserve_inference_duration_seconds")
    batch = histogram_delta(before, after, "optiserve_batch_size")
    padding = histogram_delta(before, after, "optiserve_batch_padding_ratio")
    return {
        "requests_by_code": requests_by_code(before, after, ENDPOINT),
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


def start_locust(cfg: LoadTestConfig) -> subprocess.Popen[str]:
    """Start Locust headless in its own process; it stops by itself after ``cfg.duration_s``."""
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, INPUTS_ENV: str(cfg.max_inputs)}
    if cfg.model:
        env[MODEL_ENV] = cfg.model
    # Output goes to a log file, not a pipe: an unread pipe would stall a long run.
    with _log_path(cfg).open("w") as log:
        return subprocess.Popen(
            _locust_command(cfg, cfg.out_dir / f"{cfg.label}_locust"),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )


def _log_path(cfg: LoadTestConfig) -> Path:
    return cfg.out_dir / f"{cfg.label}_locust.log"


def wait_locust(proc: subprocess.Popen[str], cfg: LoadTestConfig) -> None:
    limit = cfg.duration_s + STOP_TIMEOUT_S + 60
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"locust did not stop within {limit} s; see {_log_path(cfg)}") from None
    if proc.returncode != 0:
        tail = _log_path(cfg).read_text(errors="replace")[-2000:]
        raise RuntimeError(f"locust exited with {proc.returncode}:\n{tail}")


def run_loadtest(cfg: LoadTestConfig) -> LoadTestSummary:
    """Run Locust against ``cfg.host`` for ``cfg.duration_s`` seconds; write ``<label>.json`` and ``.md``."""
    metrics_url = cfg.host.rstrip("/") + "/metrics"
    csv_prefix = cfg.out_dir / f"{cfg.label}_locust"
    before = scrape(metrics_url)
    wait_locust(start_locust(cfg), cfg)
    after = scrape(metrics_url)
    summary = LoadTestSummary(
        label=cfg.label,
        host=cfg.host,
        users=cfg.users,
        duration_s=cfg.duration_s,
        max_inputs=cfg.max_inputs,
        client=client_stats(Path(f"{csv_prefix}_stats.csv")),
        server=_server_stats(before, after),
    )
    json_path, md_path = cfg.out_dir / f"{cfg.label}.json", cfg.out_dir / f"{cfg.label}.md"
    summary.files = [str(p) for p in (json_path, md_path, Path(f"{csv_prefix}_stats.csv"))]
    json_path.write_text(json.dumps(asdict(summary), indent=2) + "\n", encoding="utf-8")
    md_path.write_text(render_summary(summary) + "\n", encoding="utf-8")
    return summary


def render_summary(s: LoadTestSummary) -> str:
    c, srv = s.client, s.server
    dist = ", ".join(f"{label}: {int(n)}" for label, n in srv.get("batch_size_distribution", []))
    return "\n".join(
        [
            f"# Load test: {s.label}",
            "",
            f"{s.users} users, {s.duration_s} s, 1..{s.max_inputs} inputs per request, against {s.host}",
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
    )
