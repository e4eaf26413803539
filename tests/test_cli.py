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
from serving.ports import free_port

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


def _optimize_with_data(model_dir: Path, data: Path, out: Path) -> int:
    return main(["optimize", str(model_dir), "--out", str(out), "--data", str(data), "--recipe", str(_DATA_RECIPE)])


_DATA_RECIPE = Path(__file__).resolve().parent / "recipes" / "tiny-data.yaml"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"\n  \n", "holds no text"),
        (b"one line\nanother line\n", "2 distinct non-empty inputs; the train, validation, calibration"),
        (b"caf\xe9 au lait\n" * 200, "not UTF-8 text (byte 0xe9 at offset 3)"),
    ],
    ids=["missing", "empty", "too-few-lines", "bad-encoding"],
)
def test_optimize_data_errors_are_one_line_and_write_nothing(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, message: str
) -> None:
    data = tmp_path / "texts.txt"
    if content is not None:
        data.write_bytes(content)
    assert _optimize_with_data(tiny_model_dir, data, tmp_path / "pkg") == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == (["texts.txt"] if content is not None else [])


def test_optimize_on_the_users_own_text_uses_it_for_every_split(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    data = tmp_path / "support-tickets.jsonl"
    lines = [
        json.dumps({"text": f"ticket {i}: the printer on floor {i % 7} shows error {i * 13 % 97}"}) for i in range(150)
    ]
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert _optimize_with_data(tiny_model_dir, data, tmp_path / "pkg") == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "pkg" / "report.json").read_text())
    assert report["data"]["source"] == str(data.resolve()) and report["data"]["seed"] == 0
    assert report["data"]["splits"] == {"train": 90, "validation": 15, "calibration": 15, "heldout": 30}
    assert report["heldout_samples"] == 30 and "support-tickets.jsonl" in capsys.readouterr().out
