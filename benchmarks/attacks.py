"""Bounded attacks on a live server over loopback, measuring what health checks and normal requests see meanwhile.

    .venv/bin/python benchmarks/attacks.py                        # about 4 min on 2 cores; docs/reliability.md
    .venv/bin/python benchmarks/attacks.py --scale 0.05 --no-docs  # a quick check of the script itself

Scenarios (each while a probe thread sends a health check and a one-input embeddings request on fresh
connections every ``PROBE_EVERY_S``): 2,000 slow uploads (headers with ``Content-Length: 100000``, then 10
bytes every 5 s), 8,000 idle connections, a SIGSTOPped replica, big requests (511 inputs x 32,768 chars and 400
x 1,200) among 47 concurrent small requests, and loop stalls (a 12 MiB ``{"input": "x", "user": [[], …]}`` body,
a 16 MiB KServe binary body of empty BYTES elements). The server runs in its own process with the defaults
(plus ``OPTISERVE_HEALTH_PORT``), the package is built first if ``--package`` is not given (as
benchmarks/soak.py does). Writes runs/attacks/attacks.json and the "Ingress attacks" section of
docs/reliability.md. Every connection has a deadline, so the run is bounded even when a request hangs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from serving.launcher import wait_ready  # noqa: E402
from serving.ports import free_port  # noqa: E402

HOST = "127.0.0.1"
REPLICA_TITLE = "ServeReplica:optiserve:InferenceService"
PROBE_EVERY_S = 0.2
PROBE_TIMEOUT_S = 10.0  # a probe slower than this counts as hung
DOC = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- benchmarks/attacks.py: begin -->", "<!-- benchmarks/attacks.py: end -->"
SERVE = """
import sys
from serving.launcher import run_until_signalled
run_until_signalled([sys.argv[1]], "127.0.0.1", int(sys.argv[2]), num_cpus=2)
"""


def p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


@dataclass
class Probes:
    """Health checks and normal requests, each on a new connection, from their own thread."""

    url: str
    health_url: str
    samples: dict[str, list[tuple[float, int]]] = field(default_factory=lambda: {"health": [], "normal": []})

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(kind,), daemon=True) for kind in ("health", "normal")]

    def _one(self, kind: str, call: Callable[[], httpx.Response]) -> None:
        started = time.monotonic()
        try:
            status = call().status_code
        except httpx.HTTPError:
            status = 0
        self.samples[kind].append((time.monotonic() - started, status))

    def _run(self, kind: str) -> None:
        """One kind of probe, in its own thread (a hung one does not delay the other)."""
        while not self._stop.wait(PROBE_EVERY_S):
            if kind == "health":
                self._one(kind, lambda: httpx.get(f"{self.url}/v2/health/ready", timeout=PROBE_TIMEOUT_S))
            else:
                self._one(kind, self._normal)

    def _normal(self) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/embeddings", json={"input": "hello"}, timeout=PROBE_TIMEOUT_S)

    def __enter__(self) -> Probes:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2 * PROBE_TIMEOUT_S)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for kind, samples in self.samples.items():
            ok = [s for s, status in samples if status == 200]
            out[kind] = {
                "n": len(samples),
                "failed": len(samples) - len(ok),
                "p99_ms": round(1e3 * (p99([s for s, _ in samples]) or 0.0), 1),
            }
        return out


def _status(data: bytes) -> str:
    line = data.split(b"\r\n", 1)[0].split()
    return line[1].decode() if len(line) > 1 and data.startswith(b"HTTP/") else ("closed" if not data else "other")


async def _hold(port: int, head: bytes, drip: bytes | None, hold_s: float, sem: asyncio.Semaphore) -> tuple[str, float]:
    """One attacking connection: send ``head``, then ``drip`` every 5 s, until answered or ``hold_s`` passes."""
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 30)
        except (OSError, TimeoutError):
            return "connect_failed", 0.0
    started = time.monotonic()
    try:
        if head:
            writer.write(head)
        read = asyncio.ensure_future(reader.read(4096))
        while time.monotonic() - started < hold_s:
            done, _ = await asyncio.wait({read}, timeout=min(5.0, max(0.0, hold_s - (time.monotonic() - started))))
            if done:
                try:
                    return _status(read.result()), time.monotonic() - started
                except OSError:
                    return "reset", time.monotonic() - started
            if drip:
                writer.write(drip)
        read.cancel()
        return "still_open", hold_s
    finally:
        writer.close()


def connection_attack(port: int, count: int, head: bytes, drip: bytes | None, hold_s: float) -> dict[str, Any]:
    async def run() -> list[tuple[str, float]]:
        sem = asyncio.Semaphore(256)  # connecting at once
        return await asyncio.gather(*(_hold(port, head, drip, hold_s, sem) for _ in range(count)))

    results = asyncio.run(run())
    by_status: dict[str, int] = {}
    for status, _ in results:
        by_status[status] = by_status.get(status, 0) + 1
    answered = [seconds for status, seconds in results if status not in ("still_open", "connect_failed")]
    return {"connections": count, "by_status": by_status, "answered_max_s": round(max(answered, default=0.0), 1)}


def _replica_pids(root_pid: int) -> list[int]:
    procs = [psutil.Process(root_pid), *psutil.Process(root_pid).children(recursive=True)]
    pids = []
    for proc in procs:
        try:
            if any(REPLICA_TITLE in part for part in proc.cmdline()):
                pids.append(proc.pid)
        except psutil.Error:
            pass
    return pids


def _wait_replaced(url: str, root_pid: int, victim: int, since: float, limit_s: float) -> float | None:
    """Seconds from ``since`` until a replica other than ``victim`` runs and the server is ready again (None: not
    within ``limit_s``)."""
    while time.monotonic() < since + limit_s:
        if [p for p in _replica_pids(root_pid) if p != victim]:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                    return round(time.monotonic() - since, 1)
            except httpx.HTTPError:
                pass
        time.sleep(0.5)
    return None


def stalled_replica(url: str, root_pid: int, requests: int, limit_s: float) -> dict[str, Any]:
    (victim,) = _replica_pids(root_pid)
    os.kill(victim, signal.SIGSTOP)
    stalled_at = time.monotonic()
    answers: list[tuple[str, float]] = []

    def send() -> None:
        started = time.monotonic()
        try:
            status = str(httpx.post(f"{url}/v1/embeddings", json={"input": "hi"}, timeout=limit_s).status_code)
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        answers.append((status, round(time.monotonic() - started, 1)))

    senders = []
    for _ in range(requests):
        senders.append(threading.Thread(target=send, daemon=True))
        senders[-1].start()
        time.sleep(2)
    try:
        replaced_s = _wait_replaced(url, root_pid, victim, stalled_at, limit_s)
    finally:
        try:
            os.kill(victim, signal.SIGCONT)
        except ProcessLookupError:
            pass
    for sender in senders:
        sender.join(timeout=limit_s)
    statuses: dict[str, int] = {}
    for status, _ in answers:
        statuses[status] = statuses.get(status, 0) + 1
    return {
        "requests": requests,
        "by_status": statuses,
        "answered_max_s": max((s for _, s in answers), default=None),
        "replaced_after_s": replaced_s,
    }


def _post(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> tuple[int, float]:
    started = time.monotonic()
    try:
        status = httpx.post(url, content=body, headers=headers, timeout=timeout_s).status_code
    except httpx.HTTPError:
        status = 0
    return status, round(time.monotonic() - started, 2)


def big_requests(url: str, scale: float, small_workers: int, repeat: int) -> dict[str, Any]:
    """Big embeddings requests, one after another, while ``small_workers`` clients send small ones."""
    stop = threading.Event()
    small: list[tuple[float, int]] = []

    def worker() -> None:
        with httpx.Client(timeout=PROBE_TIMEOUT_S) as client:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    status = client.post(f"{url}/v1/embeddings", json={"input": ["a small request"] * 2}).status_code
                except httpx.HTTPError:
                    status = 0
                small.append((time.monotonic() - started, status))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(small_workers)]
    for thread in threads:
        thread.start()
    got: dict[str, list[tuple[int, float]]] = {}
    try:
        for count, chars in ((max(1, int(511 * scale)), 32_768), (max(1, int(400 * scale)), 1_200)):
            body = json.dumps({"input": ["word " * (chars // 5)] * count}).encode()
            got[f"{count}x{chars}"] = [
                _post(f"{url}/v1/embeddings", body, {"Content-Type": "application/json"}, 120) for _ in range(repeat)
            ]
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=2 * PROBE_TIMEOUT_S)
    ok = [s for s, status in small if status == 200]
    return {
        "big": got,
        "small": {
            "n": len(small),
            "failed": len(small) - len(ok),
            "p99_ms": round(1e3 * (p99([s for s, _ in small]) or 0), 1),
        },
    }


def loop_stalls(url: str, model: str, scale: float, repeat: int) -> dict[str, Any]:
    nested_mib = 12 * scale
    arrays = int(nested_mib * 2**20) // 3
    nested = b'{"input":"x","user":[' + b"[]," * (arrays - 1) + b"[]]}"
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "shape": [0],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 0},
                }
            ]
        }
    )
    elements = int((16 * scale * 2**20 - len(header) - 64) // 4)
    header = header.replace('"shape": [0]', f'"shape": [{elements}]').replace(
        '"binary_data_size": 0', f'"binary_data_size": {4 * elements}'
    )
    kserve = header.encode() + struct.pack("<I", 0) * elements
    json_headers = {"Content-Type": "application/json"}
    binary_headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
    return {
        f"nested_json_{len(nested) / 2**20:.1f}MiB": [
            _post(f"{url}/v1/embeddings", nested, json_headers, 120) for _ in range(repeat)
        ],
        f"kserve_bytes_{elements}_elements_{len(kserve) / 2**20:.1f}MiB": [
            _post(f"{url}/v2/models/{model}/infer", kserve, binary_headers, 120) for _ in range(repeat)
        ],
    }


@contextmanager
def serving(package: Path, port: int, health_port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "OPTISERVE_HEALTH_PORT": str(health_port),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
    }
    env.pop("RAY_ADDRESS", None)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", SERVE, str(package), str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_ready(f"http://{HOST}:{port}")
            yield process
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)


def ensure_package(out: Path, package: Path | None) -> Path:
    if package is not None:
        return package
    from optimizers.chain import optimize
    from optimizers.source import bundled_model_dir

    built = out / "package"
    if not (built / "manifest.json").exists():
        optimize(bundled_model_dir(), built)
    return built


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run(package: Path, out: Path, scale: float) -> dict[str, Any]:
    fds = raise_fd_limit()
    port, health_port = free_port(), free_port()
    url = f"http://{HOST}:{port}"
    result: dict[str, Any] = {"scale": scale, "fd_limit": fds, "scenarios": {}}
    with serving(package, port, health_port, out / "server.log") as process:
        model = httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]
        slow_head = b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        slow_head += b"Content-Length: 100000\r\n\r\n0123456789"
        scenarios: dict[str, Callable[[], dict[str, Any]]] = {
            "slow_uploads": lambda: connection_attack(port, int(2000 * scale), slow_head, b"0123456789", 25),
            "idle_connections": lambda: connection_attack(port, int(8000 * scale), b"", None, 25),
            "stalled_replica": lambda: stalled_replica(url, process.pid, 5, 90),
            "big_requests": lambda: big_requests(url, scale, 47, 2),
            "loop_stalls": lambda: loop_stalls(url, model, scale, 2),
        }
        for name, scenario in scenarios.items():
            started = time.monotonic()
            with Probes(url, f"http://{HOST}:{health_port}") as probes:
                outcome = scenario()
            outcome["probes"] = probes.summary()
            outcome["seconds"] = round(time.monotonic() - started, 1)
            result["scenarios"][name] = outcome
            print(name, json.dumps(outcome), flush=True)
            wait_ready(url, timeout_s=120)  # the next scenario starts from a healthy server
    return result


def _commit() -> str:
    run_ = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT)
    return run_.stdout.strip() or "unknown"


def _package_name(package: Path) -> str:
    return str(json.loads((package / "manifest.json").read_text())["name"])


def render(result: dict[str, Any], package: Path) -> str:
    s = result["scenarios"]
    scale = result["scale"]

    def probes(outcome: dict[str, Any]) -> str:
        h, n = outcome["probes"]["health"], outcome["probes"]["normal"]
        return (
            f"health p99 {h['p99_ms']} ms ({h['failed']}/{h['n']} failed); "
            f"normal p99 {n['p99_ms']} ms ({n['failed']}/{n['n']} failed)"
        )

    rows = []
    if "slow_uploads" in s:
        o = s["slow_uploads"]
        rows.append(
            (
                f"{o['connections']} slow uploads (10 bytes / 5 s)",
                f"{o['by_status']}, all by {o['answered_max_s']} s",
                probes(o),
            )
        )
    if "idle_connections" in s:
        o = s["idle_connections"]
        rows.append(
            (f"{o['connections']} idle connections", f"{o['by_status']}, all by {o['answered_max_s']} s", probes(o))
        )
    if "stalled_replica" in s:
        o = s["stalled_replica"]
        rows.append(
            (
                f"Replica SIGSTOPped, {o['requests']} requests sent to it",
                f"{o['by_status']}, slowest answered in {o['answered_max_s']} s; "
                f"replaced after {o['replaced_after_s']} s",
                probes(o),
            )
        )
    if "big_requests" in s:
        o = s["big_requests"]
        big = "; ".join(f"{k}: {v}" for k, v in o["big"].items())
        rows.append(
            (
                "Big requests (inputs x chars) among 47 concurrent small ones",
                f"(status, s): {big}; small p99 {o['small']['p99_ms']} ms, "
                f"{o['small']['failed']}/{o['small']['n']} failed",
                probes(o),
            )
        )
    if "loop_stalls" in s:
        o = s["loop_stalls"]
        got = "; ".join(f"{k}: {v}" for k, v in o.items() if k not in ("probes", "seconds"))
        rows.append(("Loop-stall bodies", f"(status, s): {got}", probes(o)))
    commit = _commit()
    lines = [
        BEGIN,
        "## Ingress attacks",
        "",
        f"`benchmarks/attacks.py` (scale {scale:g}) on {time.strftime('%Y-%m-%d')} at {commit} (working tree: the "
        "lead's app fixes for big requests and loop stalls were in progress, so those rows show that state), "
        f"package `{_package_name(package)}`, loopback, {os.cpu_count()} cores shared by attacker and server, fd limit "
        f'{result["fd_limit"]}. Server defaults (docs/limits.md, "Timeouts and connections"). Probes: a health '
        f"check (`/v2/health/ready`) and a one-input embeddings request, each on a new connection every "
        f"{PROBE_EVERY_S} s; a probe over {PROBE_TIMEOUT_S:.0f} s counts as failed.",
        "",
        "| scenario | what the attack requests got | health and normal requests meanwhile |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        END,
    ]
    return "\n".join(lines)


def write_doc(section: str) -> None:
    text = DOC.read_text()
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    DOC.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, help="package to serve (default: build the bundled MiniLM's)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "attacks")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each attack's size")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/reliability.md")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    package = ensure_package(args.out, args.package)
    result = run(package, args.out, args.scale)
    (args.out / "attacks.json").write_text(json.dumps(result, indent=2) + "\n")
    section = render(result, package)
    print(section)
    if not args.no_docs:
        write_doc(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
