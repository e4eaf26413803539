"""Serving benchmark on CPU: what a user would build with Ray Serve versus optiserve, under the same Locust load.

    .venv/bin/python benchmarks/serving_cpu.py                    # ~10 min on 2 cores
    .venv/bin/python benchmarks/serving_cpu.py --users 16 --duration 20 --out runs/bench-serving

In one run, one deployment after the other on the same Ray instance and the same ingress (HAProxy), each
replica given one CPU, each load closed-loop Locust (``benchmarks/request_path.py``'s client):
  noop: a Ray Serve deployment that reads the JSON body and answers a constant: the floor of the request path;
  tiny: optiserve serving a 2-layer, 32-wide BERT (model cost about 0): optiserve's own per-request work;
  (a) sentence-transformers (torch fp32) in Ray Serve, one ``encode`` call per request;
  (b) the same behind ``@serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)`` over requests;
  (c) the optimized optiserve package with optiserve's batching (items, length-sorted calls, token budget).
(a), (b) and (c) take two loads, single-sentence requests and 1..16 sentences per request; (c) runs with its
response cache off (the held-out set repeats within a load), and also takes a Zipf-distributed workload (s = 1.1
over the held-out set, one sentence per request) with the cache off and then on (the package's default, 64 MiB).
Also measured: the package's model-only throughput (its pipeline called directly, batches as served, 1 thread)
and the serving overhead at p50 (one user, one sentence: client latency minus the model's batch-1 latency).

Writes ``<out>/serving_cpu.json`` and ``.md`` and copies the Markdown to
``benchmarks/results/serving_cpu.md``. Locust runs on the same cores as the server: on 2 cores it competes with
the replica, which the report states.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.request_path import cpu_description, locust, noop_app, tiny_package  # noqa: E402
from benchmarks.waiting import wait_serving  # noqa: E402
from corpus import load_split  # noqa: E402
from loadtests.runner import LoadTestConfig, run_loadtest  # noqa: E402
from modelpkg.package import load_package  # noqa: E402
from modelpkg.pipeline import TextPipeline  # noqa: E402
from optimizers.source import bundled_model_dir  # noqa: E402

PROFILES = {"single": 1, "mixed": 16}
ZIPF_S = 1.1
RESULT_FILE = ROOT / "benchmarks" / "results" / "serving_cpu.md"


def sentence_transformers_app(batched: bool) -> Any:
    """Deployment (a) or (b): what a careful Ray Serve user writes around sentence-transformers."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    def body(vectors: np.ndarray) -> bytes:
        import orjson

        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        return orjson.dumps({"object": "list", "data": data}, option=orjson.OPT_SERIALIZE_NUMPY)

    class Encoder:
        def __init__(self, model_dir: str) -> None:
            from sentence_transformers import SentenceTransformer

            self.model = SentenceTransformer(model_dir, device="cpu")

        async def texts_of(self, request: Request) -> list[str]:
            raw = (await request.json())["input"]
            return [raw] if isinstance(raw, str) else raw

    @serve.deployment(name="STPerRequest", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=256)
    class PerRequest(Encoder):
        async def __call__(self, request: Request) -> Response:
            vectors = self.model.encode(await self.texts_of(request), batch_size=32)
            return Response(body(vectors), media_type="application/json")

    @serve.deployment(name="STBatched", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=256)
    class Batched(Encoder):
        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
        async def encode(self, requests: list[list[str]]) -> list[np.ndarray]:
            flat = [text for texts in requests for text in texts]
            vectors = self.model.encode(flat, batch_size=32)
            out, start = [], 0
            for texts in requests:
                out.append(vectors[start : start + len(texts)])
                start += len(texts)
            return out

        async def __call__(self, request: Request) -> Response:
            return Response(body(await self.encode(await self.texts_of(request))), media_type="application/json")

    return (Batched if batched else PerRequest).bind(str(bundled_model_dir()))


def model_only(package_dir: Path) -> dict[str, float]:
    """The package's pipeline called directly (1 thread), batches of max_batch_size cut as a replica cuts them."""
    package = load_package(package_dir)
    settings = package.manifest.serving
    pipeline = TextPipeline.from_package(package, threads=1)
    texts = load_split("heldout")[:512]
    pipeline.run(texts[:32])
    start = time.perf_counter()
    pipeline.run_as_served(texts, settings)
    items_per_s = len(texts) / (time.perf_counter() - start)
    singles = []
    for text in texts[:200]:
        t0 = time.perf_counter()
        pipeline.run([text])
        singles.append(time.perf_counter() - t0)
    return {"items_per_s": items_per_s, "batch1_p50_ms": float(np.median(singles) * 1e3)}


def ensure_package(out: Path) -> Path:
    package_dir = out / "package"
    if not (package_dir / "manifest.json").exists():
        from optimizers.chain import optimize

        optimize(bundled_model_dir(), package_dir)
    return package_dir


def run(users: int, duration: int, out: Path) -> dict[str, Any]:
    from ray import serve

    from serving.launcher import start, wait_ready
    from serving.ports import free_port

    package_dir = ensure_package(out)
    tiny = tiny_package(out)
    texts_file = out / "heldout.json"
    texts_file.write_text(json.dumps(load_split("heldout")))
    result: dict[str, Any] = {"model_only": model_only(package_dir), "served": {}}
    server = start("127.0.0.1", free_port(), num_cpus=2, threads=1)

    def load(label: str, max_inputs: int = 1, zipf: float = 0.0) -> None:
        result["served"][label] = locust(server.url, texts_file, users, duration, zipf=zipf, max_inputs=max_inputs)
        print(label, json.dumps(result["served"][label]), flush=True)

    try:
        variants = {
            "noop": (lambda: serve.run(noop_app(), name="bench", route_prefix="/"), {"single": 1}),
            "tiny": (lambda: server.deploy(tiny), {"single": 1}),
            "a_st_per_request": (
                lambda: serve.run(sentence_transformers_app(False), name="bench", route_prefix="/"),
                PROFILES,
            ),
            "b_st_serve_batch": (
                lambda: serve.run(sentence_transformers_app(True), name="bench", route_prefix="/"),
                PROFILES,
            ),
            # The model path, not the cache: the held-out set repeats within a load.
            "c_optiserve": (lambda: server.deploy(package_dir, {"cache_mb": 0}), PROFILES),
        }
        for name, (deploy, profiles) in variants.items():
            for app in serve.status().applications:
                serve.delete(app)
            deploy()
            wait_serving(server.url)
            for profile, max_inputs in profiles.items():
                load(f"{name}-{profile}", max_inputs)
        load("c_optiserve-zipf-nocache", zipf=ZIPF_S)
        server.deploy(package_dir)  # the package's default: its response cache on (64 MiB)
        wait_serving(server.url)
        load("c_optiserve-zipf-cache", zipf=ZIPF_S)
        server.deploy(package_dir, {"cache_mb": 0})
        wait_ready(server.url)
        quiet = run_loadtest(
            LoadTestConfig(host=server.url, out_dir=out, users=1, duration_s=10, max_inputs=1, label="c-one-user")
        )
        result["one_user"] = {"client": quiet.client, "server": quiet.server}
    finally:
        server.stop()
    return result


def ratios(result: dict[str, Any]) -> dict[str, float]:
    s = result["served"]
    one = result["one_user"]
    return {
        "tiny_over_noop_rps": s["tiny-single"]["rps"] / s["noop-single"]["rps"],
        "c_over_b_single_rps": s["c_optiserve-single"]["rps"] / s["b_st_serve_batch-single"]["rps"],
        "c_over_b_mixed_rps": s["c_optiserve-mixed"]["rps"] / s["b_st_serve_batch-mixed"]["rps"],
        "c_over_a_single_rps": s["c_optiserve-single"]["rps"] / s["a_st_per_request-single"]["rps"],
        "c_over_a_mixed_rps": s["c_optiserve-mixed"]["rps"] / s["a_st_per_request-mixed"]["rps"],
        "served_over_model_only_mixed": s["c_optiserve-mixed"]["items_per_s"] / result["model_only"]["items_per_s"],
        "served_over_model_only_single": s["c_optiserve-single"]["items_per_s"] / result["model_only"]["items_per_s"],
        "zipf_cache_over_nocache_rps": s["c_optiserve-zipf-cache"]["rps"] / s["c_optiserve-zipf-nocache"]["rps"],
        "overhead_p50_ms_client": one["client"]["p50_ms"] - result["model_only"]["batch1_p50_ms"],
        "overhead_p50_ms_server": one["server"]["request_p50_ms"] - one["server"]["inference_p50_ms"],
    }


def render(result: dict[str, Any], command: str) -> str:
    r, s, m = result["ratios"], result["served"], result["model_only"]
    rows = [
        f"| {label} | {v['rps']:.1f} | {v['items_per_s']:.1f} | {v['p50_ms']:.0f} | {v['p99_ms']:.0f} | "
        f"{v['failures']:.0f} |"
        for label, v in s.items()
    ]
    one = result["one_user"]
    return "\n".join(
        [
            "# Serving benchmark (CPU)",
            "",
            f"Command: `{command}`  ",
            f"Commit: {result['commit']}, {result['when']}  ",
            f"Machine: {result['machine']}; Locust ({result['users']} users, closed loop, {result['duration_s']} s "
            "per load) runs on the same cores as the server; HAProxy ingress.",
            "",
            "| deployment-load | req/s | items/s | p50 ms | p99 ms | failures |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            f"Model only (package pipeline, 1 thread, batches as served): {m['items_per_s']:.0f} items/s; "
            f"batch-1 latency p50 {m['batch1_p50_ms']:.2f} ms.",
            f"One user, one sentence, optiserve: client p50 {one['client']['p50_ms']:.1f} ms (Locust rounds to 1 ms),"
            f" server request p50 {one['server']['request_p50_ms']:.2f} ms, batch inference p50 "
            f"{one['server']['inference_p50_ms']:.2f} ms.",
            "",
            "| ratio | value |",
            "|---|---|",
            *(f"| {k} | {v:.2f} |" for k, v in r.items()),
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--duration", type=int, default=20, help="seconds per load")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-serving"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = run(args.users, args.duration, args.out.resolve())
    result["ratios"] = ratios(result)
    result.update(
        users=args.users,
        duration_s=args.duration,
        commit=subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip(),
        when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        machine=f"{cpu_description()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"ray {version('ray')}, onnxruntime {version('onnxruntime')}, torch {version('torch')}, "
        f"sentence-transformers {version('sentence-transformers')}",
    )
    command = "python benchmarks/serving_cpu.py " + " ".join(sys.argv[1:])
    (args.out / "serving_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = render(result, command.strip())
    (args.out / "serving_cpu.md").write_text(markdown)
    RESULT_FILE.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(args.out / "serving_cpu.md", RESULT_FILE)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
