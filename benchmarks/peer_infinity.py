"""optiserve beside a peer embedding server, Infinity (infinity-emb 0.0.78 on its CPU path, ONNX through optimum),
one after the other under the same Locust load, on the same machine with nothing else running.

    bash scripts/infinity-venv.sh          # once: Infinity in its own environment (.venv-infinity)
    .venv/bin/python benchmarks/peer_infinity.py [--package DIR] [--users 16] [--duration 30] [--rounds 2]

Both serve the bundled all-MiniLM-L6-v2. Infinity's CPU path reads an ONNX file beside the model, as hub repos
ship them: its directory gets the int8 file sentence-transformers exports for this CPU family
(``export_dynamic_quantized_onnx_model(..., "avx512_vnni")``, the hub's ``model_qint8_avx512_vnni.onnx``, or its
``avx2`` file on CPUs without VNNI, which the hub also ships), at its
root and served from there with ``--model-id .`` (infinity-emb 0.0.78 with optimum 2 finds no file in an
``onnx/`` subfolder or by an absolute path; its own ONNX graph optimization fails there too, with an API error,
and it serves the file as it is). optiserve serves
the package the default recipe makes (``--package``, or it optimizes one first, kept under runs/bench-grpc), in
the replica layout the chain measured, with its response cache off (the load draws from 1,000 held-out sentences,
so a cache would measure itself, not the model). Each round starts one server, runs a closed-loop load with one
sentence per request and one with 1..16 per request, stops it, then the other (the order alternates by round).
Writes ``benchmarks/results/peer_infinity.md`` with the ratios.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.grpc_vs_http import describe_package, package_of  # noqa: E402
from benchmarks.request_path import locust  # noqa: E402
from corpus import load_split  # noqa: E402

RESULT_FILE = ROOT / "benchmarks" / "results" / "peer_infinity.md"
INFINITY = ROOT / ".venv-infinity" / "bin" / "infinity_emb"
INFINITY_MODEL = ROOT / "runs" / "infinity-model"
PREPARE = """
import shutil, sys
from pathlib import Path
from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model
out = Path(sys.argv[2])
shutil.copytree(sys.argv[1], out)
model = SentenceTransformer(str(out), backend="onnx", device="cpu")
export_dynamic_quantized_onnx_model(model, sys.argv[3], str(out))
made = next((out / "onnx").glob(f"model_q*int8_{sys.argv[3]}.onnx"))  # quint8 for avx2, qint8 for vnni
made.rename(out / made.name)
shutil.rmtree(out / "onnx")
"""
MODEL = "all-MiniLM-L6-v2"
LOADS = {"1 sentence": 1, "1-16 sentences": 16}
CLIENT_NOTE = (
    "Locust runs on the same cores as the server it loads and takes a large share of them (the same package answered "
    "1,347 single-sentence req/s to an asyncio client on this machine: benchmarks/results/grpc_vs_http.md), so the "
    "single-sentence figures are below what either server alone does; both meet the same client."
)


def wait_until_up(url: str, timeout_s: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}) before it answered {url}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")


def int8_config() -> str:
    """sentence-transformers' int8 export for this CPU, as the hub ships one per family."""
    from modelpkg.hardware import detect

    return "avx512_vnni" if detect().has("vnni") else "avx2"


def int8_file() -> str:
    """The hub's name for it: unsigned weights for AVX2 (``model_quint8_avx2.onnx``), signed for VNNI."""
    return f"model_{'qint8' if int8_config() == 'avx512_vnni' else 'quint8'}_{int8_config()}.onnx"


def prepare_infinity_model() -> Path:
    """The bundled model's directory with the int8 ONNX file Infinity's CPU path reads (made once per CPU family)."""
    if not (INFINITY_MODEL / int8_file()).is_file():
        from optimizers.source import bundled_model_dir

        shutil.rmtree(INFINITY_MODEL, ignore_errors=True)
        python = str(INFINITY.with_name("python"))
        subprocess.run(
            [python, "-c", PREPARE, str(bundled_model_dir()), str(INFINITY_MODEL), int8_config()], check=True
        )
    return INFINITY_MODEL


@contextmanager
def running(command: list[str], ready_url: str, cwd: Path = ROOT) -> Iterator[None]:
    """A server process, from ready to stopped (SIGINT, as Ctrl-C; killed if it lingers)."""
    log = open(ROOT / "runs" / f"peer-{Path(command[0]).name}.log", "ab")  # closed below
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
    try:
        wait_until_up(ready_url, 600, process)
        yield
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def infinity(port: int) -> tuple[list[str], str, Path]:
    command = [str(INFINITY), "v2", "--model-id", ".", "--served-model-name", MODEL, "--engine", "optimum"]
    command += ["--device", "cpu", "--port", str(port), "--url-prefix", "/v1"]
    return command, f"http://127.0.0.1:{port}/v1/models", prepare_infinity_model()


def optiserve(port: int, package: Path) -> tuple[list[str], str, Path]:
    """``optiserve serve`` as a user runs it (the chain's replica layout), its response cache off."""
    command = [str(ROOT / ".venv" / "bin" / "optiserve"), "serve", str(package), "--port", str(port), "--cache-mb", "0"]
    return command, f"http://127.0.0.1:{port}/v2/health/ready", ROOT


def measure(
    label: str, start: Callable[[int], tuple[list[str], str, Path]], texts_file: Path, users: int, duration: int
) -> dict[str, dict[str, Any]]:
    from serving.ports import free_port

    port = free_port()
    command, ready, cwd = start(port)
    results = {}
    with running(command, ready, cwd):
        url = f"http://127.0.0.1:{port}"
        locust(url, texts_file, users, 5, max_inputs=1)  # warm-up, not recorded
        for load, max_inputs in LOADS.items():
            results[load] = locust(url, texts_file, users, duration, max_inputs=max_inputs)
            print(label, load, json.dumps({k: v for k, v in results[load].items() if k != "errors"}), flush=True)
    return results


def summary(rounds: list[dict[str, Any]], package: Path, command: str) -> str:
    from modelpkg.hardware import detect
    from modelpkg.package import read_manifest

    lines = [
        "# optiserve beside Infinity (the same Locust load, one server at a time)",
        "",
        f"Command: `{command}`  ",
        f"CPU: {detect().describe()}; optiserve package: {describe_package(read_manifest(package))}; "
        f"Infinity 0.0.78, `--engine optimum --device cpu`, the bundled model with `{int8_file()}`",
        "",
        "| load | server | req/s per round | p50 ms | p99 ms | failures |",
        "|---|---|---|---|---|---|",
    ]
    ratios = []
    for load in LOADS:
        means = {}
        for server in ("infinity", "optiserve"):
            runs = [r[server][load] for r in rounds]
            means[server] = statistics.mean(r["rps"] for r in runs)
            each = ", ".join(f"{r['rps']:.0f}" for r in runs)
            p50, p99 = (statistics.mean(r[key] for r in runs) for key in ("p50_ms", "p99_ms"))
            failures = sum(r["failures"] for r in runs)
            lines.append(f"| {load} | {server} | {each} | {p50:.0f} | {p99:.0f} | {failures} |")
        ratios.append(f"{load}: optiserve / Infinity x{means['optiserve'] / means['infinity']:.2f}")
    return "\n".join([*lines, "", "; ".join(ratios), "", CLIENT_NOTE, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--package", type=Path, help="an optiserve package (default: optimize the bundled MiniLM)")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--duration", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--result", type=Path, default=RESULT_FILE, help="the Markdown file written")
    args = parser.parse_args()
    if not INFINITY.exists():
        sys.exit(f"{INFINITY} not found: run `bash scripts/infinity-venv.sh` first")
    package = package_of(args)
    texts_file = ROOT / "runs" / "peer-heldout.json"
    texts_file.parent.mkdir(exist_ok=True)
    texts_file.write_text(json.dumps(load_split("heldout")))
    starts = {"infinity": infinity, "optiserve": lambda port: optiserve(port, package)}
    rounds = []
    for index in range(args.rounds):
        order = ["infinity", "optiserve"] if index % 2 == 0 else ["optiserve", "infinity"]
        rounds.append({name: measure(name, starts[name], texts_file, args.users, args.duration) for name in order})
    text = summary(rounds, package, "python " + " ".join(sys.argv))
    print(text)
    args.result.write_text(text)


if __name__ == "__main__":
    main()
