"""KServe v2 over gRPC beside KServe v2 over HTTP on one server and one package, under the same closed-loop load.

    .venv/bin/python benchmarks/grpc_vs_http.py [--package DIR] [--workers 16] [--seconds 15] [--rounds 2]

One server (HAProxy ingress, 1 replica, 1 thread) serves the package on an HTTP and a gRPC port. A client in this
process keeps ``--workers`` requests in flight (asyncio: ``aiohttp`` posting the JSON infer body, ``grpc.aio``
sending ``ModelInferRequest`` with raw contents), one held-out sentence per request, for ``--seconds``; the two
protocols alternate for ``--rounds`` rounds so that drift on a noisy machine hits both. Prints and writes req/s
and p50/p99 latency per protocol to ``benchmarks/results/grpc_vs_http.md``. Without ``--package`` it optimizes
the bundled MiniLM with the default recipe first (a few minutes; kept under runs/bench-grpc).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.serving_cpu import ensure_package  # noqa: E402
from corpus import load_split  # noqa: E402

RESULT_FILE = ROOT / "benchmarks" / "results" / "grpc_vs_http.md"


async def closed_loop(send: Callable[[str], Awaitable[None]], texts: list[str], workers: int, seconds: float) -> dict:
    """Keep ``workers`` requests in flight for ``seconds``; req/s, p50/p99 ms and failures."""
    latencies: list[float] = []
    failures = 0
    stop_at = time.perf_counter() + seconds
    cycle = itertools.cycle(texts)

    async def worker() -> None:
        nonlocal failures
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                await send(next(cycle))
            except Exception:  # noqa: BLE001 -- counted, the load goes on
                failures += 1
                continue
            latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    elapsed = time.perf_counter() - began
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "failures": failures,
        "rps": len(ordered) / elapsed,
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[int(0.99 * (len(ordered) - 1))],
    }


async def http_load(url: str, model: str, texts: list[str], workers: int, seconds: float) -> dict:
    import aiohttp
    import orjson

    connector = aiohttp.TCPConnector(limit=workers)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def send(text: str) -> None:
            body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}
            headers = {"content-type": "application/json"}
            async with session.post(f"/v2/models/{model}/infer", data=orjson.dumps(body), headers=headers) as response:
                response.raise_for_status()
                orjson.loads(await response.read())

        return await closed_loop(send, texts, workers, seconds)


async def grpc_load(target: str, model: str, texts: list[str], workers: int, seconds: float) -> dict:
    import grpc
    import numpy as np

    from serving.grpc_stubs import inference
    from serving.kserve import encode_bytes_tensor

    async with grpc.aio.insecure_channel(target) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=inference.ModelInferRequest.SerializeToString,
            response_deserializer=inference.ModelInferResponse.FromString,
        )

        async def send(text: str) -> None:
            request = inference.ModelInferRequest(
                model_name=model, raw_input_contents=[encode_bytes_tensor(np.array([text], dtype=object))]
            )
            request.inputs.add(name="text", datatype="BYTES", shape=[1])
            response = await infer(request, timeout=60)
            np.frombuffer(response.raw_output_contents[0], dtype="<f4")

        return await closed_loop(send, texts, workers, seconds)


def describe_package(manifest: Any) -> str:
    return f"{manifest.name}, {manifest.runtime} {manifest.precision} ({' -> '.join(p.name for p in manifest.chain)})"


def run(package: Path, workers: int, seconds: float, rounds: int) -> dict[str, Any]:
    from modelpkg.hardware import detect
    from modelpkg.package import read_manifest
    from serving.launcher import start
    from serving.ports import free_port

    model = read_manifest(package).name
    texts = load_split("heldout")
    server = start("127.0.0.1", free_port(), num_cpus=2, threads=1, grpc_port=free_port())
    results: dict[str, list[dict]] = {"http": [], "grpc": []}
    try:
        server.deploy(package)
        target = f"127.0.0.1:{server.grpc_port}"
        asyncio.run(http_load(server.url, model, texts[:50], workers, 3))  # warm-up, not recorded
        asyncio.run(grpc_load(target, model, texts[:50], workers, 3))
        for round_ in range(rounds):
            for protocol in ("http", "grpc") if round_ % 2 == 0 else ("grpc", "http"):
                if protocol == "http":
                    stats = asyncio.run(http_load(server.url, model, texts, workers, seconds))
                else:
                    stats = asyncio.run(grpc_load(target, model, texts, workers, seconds))
                results[protocol].append(stats)
                print(protocol, json.dumps({k: round(v, 2) for k, v in stats.items()}), flush=True)
    finally:
        server.stop()
    return {"cpu": detect().describe(), "package": describe_package(read_manifest(package)), "rounds": results}


def summary(result: dict[str, Any], command: str) -> str:
    rows = []
    for protocol, rounds in result["rounds"].items():
        rps = [r["rps"] for r in rounds]
        p50, p99 = (statistics.mean(r[key] for r in rounds) for key in ("p50_ms", "p99_ms"))
        each = ", ".join(f"{x:.1f}" for x in rps)
        rows.append(
            f"| {protocol} | {statistics.mean(rps):.1f} ({each}) | {p50:.1f} | {p99:.1f} | "
            f"{sum(r['failures'] for r in rounds)} |"
        )
    ratio = statistics.mean(r["rps"] for r in result["rounds"]["grpc"]) / statistics.mean(
        r["rps"] for r in result["rounds"]["http"]
    )
    return "\n".join(
        [
            "# KServe v2 over gRPC beside HTTP (one server, one package, one sentence per request)",
            "",
            f"Command: `{command}`  ",
            f"CPU: {result['cpu']}; package variant: {result['package']}",
            "",
            "| protocol | req/s mean (per round) | p50 ms | p99 ms | failures |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"gRPC / HTTP throughput: x{ratio:.2f}",
            "",
        ]
    )


def load_arguments(doc: str, seconds: float) -> argparse.ArgumentParser:
    """The served benchmarks' flags: the package (default: the bundled MiniLM, optimized once under
    runs/bench-grpc), requests in flight, seconds per run."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--package", type=Path, help="a package directory (default: optimize the bundled MiniLM)")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=seconds)
    return parser


def package_of(args: argparse.Namespace) -> Path:
    return args.package or ensure_package(ROOT / "runs" / "bench-grpc")


def main() -> None:
    parser = load_arguments(__doc__ or "", 15.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    result = run(package_of(args), args.workers, args.seconds, args.rounds)
    text = summary(result, "python " + " ".join(sys.argv))
    print(text)
    RESULT_FILE.write_text(text)


if __name__ == "__main__":
    main()
