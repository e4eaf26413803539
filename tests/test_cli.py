"""The command line: help, clear errors, and `optiserve serve` answering then stopping cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from optimizers.chain import Candidate, write_candidate_package
from optimizers.passes.base import Artifact
from optimizers.source import SourceModel
from optiserve.cli import main
from optiserve.demo import free_port

SHUTDOWN_TIMEOUT_S = 120


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("optimize", "serve", "loadtest", "demo"):
        assert command in out


def test_optimizing_a_directory_without_a_model_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["optimize", str(tmp_path), "--out", str(tmp_path / "pkg")])
    assert code == 2
    assert "config.json not found" in capsys.readouterr().err


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.serve
def test_serve_answers_then_shuts_down_on_sigterm(tiny_source: SourceModel, tmp_path: Path) -> None:
    package = write_candidate_package(
        tiny_source, Candidate("torch-fp32", Artifact(tiny_source.path, "hf"), chain=[]), tmp_path / "pkg"
    )
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "optiserve.cli", "serve", str(package.root), "--port", str(port), "--num-cpus", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        response = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"input": ["a", "b c"]}, timeout=30)
        assert response.status_code == 200
        assert len(response.json()["data"][1]["embedding"]) == 32
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=SHUTDOWN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, output[-3000:]
    assert "received SIGTERM; shutting down" in output
    assert not _port_open(port)
