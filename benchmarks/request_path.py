"""Where a request's time goes on optiserve's request path, and how close it comes to Ray Serve's own floor.

    .venv/bin/python benchmarks/request_path.py                         # ~4 min on 2 cores
    .venv/bin/python benchmarks/request_path.py --default-package runs/demo/package   # adds the Zipf loads
    # the same measurement for older code, from a worktree of it (its modules win over the editable install):
    git worktree add /tmp/before <commit> && PYTHONPATH=/tmp/before .venv/bin/python benchmarks/request_path.py \\
        --label before

In one run, on one Ray instance, through the same ingress (HAProxy) and under the same Locust load (16 users,
closed loop, one held-out sentence per request):
  noop:  a Ray Serve deployment that reads the JSON body and answers a constant: the floor;
  tiny:  optiserve serving a 2-layer, 32-wide BERT package (model cost about 0): optiserve's own per-request work;
  with --default-package: that package under a Zipf-distributed workload (s = 1.1 over the held-out set), with
  its response cache on (64 MiB) and off.
While ``tiny`` is under load, py-spy samples the replica process for ``--profile-s`` seconds; the samples are
grouped by component (ASGI and FastAPI, pydantic, our middleware, metrics, batching, tokenization, the model, the
event loop, Ray) and the top functions listed.

Writes ``<out>/<label>.json`` and ``<out>/<label>.md``. Locust runs on the same cores as the server.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.waiting import wait_serving
from loadtests.stats import percentile

LOCUSTFILE = """
import json, os, random
from itertools import accumulate
from locust import FastHttpUser, constant, task

TEXTS = json.loads(open(os.environ["RP_TEXTS"]).read())
S = float(os.environ.get("RP_ZIPF", "0"))
MAX_INPUTS = int(os.environ.get("RP_MAX_INPUTS", "1"))
CUM = list(accumulate(1 / (rank + 1) ** S for rank in range(len(TEXTS)))) if S else None


class Client(FastHttpUser):
    wait_time = constant(0)

    @task
    def embed(self):
        count = random.randint(1, MAX_INPUTS)
        texts = random.choices(TEXTS, cum_weights=CUM, k=count) if CUM else random.sample(TEXTS, count)
        self.client.post("/v1/embeddings", json={"input": texts[0] if MAX_INPUTS == 1 else texts})
"""

# Which component a Python frame belongs to, by its file (first match wins).
COMPONENTS = (
    ("optiserve: middleware (serving/http.py)", "serving/http.py"),
    ("optiserve: routes (serving/app.py)", "serving/app.py"),
    ("optiserve: replica and batching", ("serving/replica.py", "serving/scheduler.py", "serve/batching.py")),
    ("optiserve: response cache", "serving/response_cache.py"),
    ("optiserve: pipeline and tokenization", ("modelpkg/pipeline.py", "modelpkg/tokenizer.py", "tokenizers")),
    ("model runtime (onnxruntime)", ("onnxruntime", "modelpkg/runtimes")),
    ("metrics (prometheus_client)", "prometheus_client"),
    ("pydantic", "pydantic"),
    ("FastAPI and Starlette", ("fastapi", "starlette")),
    ("uvicorn and h11/httptools", ("uvicorn", "h11", "httptools")),
    ("Ray Serve", "ray/serve"),
    ("Ray core", "ray/"),
    ("JSON (orjson, json)", ("orjson", "json/")),
    ("asyncio event loop", ("asyncio", "uvloop")),
)


def noop_app() -> Any:
    """What the floor is: a Ray Serve deployment that reads the JSON body and answers a constant."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    @serve.deployment(name="NoOp", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=1024)
    class NoOp:
        async def __call__(self, request: Request) -> JSONResponse:
            await request.json()
            return JSONResponse({"object": "list", "data": []})

    return NoOp.bind()


def tiny_package(out: Path) -> Path:
    """A 2-layer, 32-wide BERT with MiniLM's tokenizer and pooling, exported to ONNX fp32 and packaged."""
    package_dir = out / "tiny-package"
    if (package_dir / "manifest.json").exists():
        return package_dir
    import torch
    from transformers import BertConfig, BertModel

    from modelpkg.manifest import FidelityBudget
    from optimizers.chain import optimize
    from optimizers.source import bundled_model_dir

    source = out / "tiny-source"
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=512
    )
    BertModel(config, add_pooling_layer=False).eval().save_pretrained(source, safe_serialization=True)
    bundled = bundled_model_dir()
    for name in ("tokenizer.json", "modules.json", "sentence_bert_config.json", "1_Pooling/config.json"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(bundled / name, source / name)
    pooling = json.loads((source / "1_Pooling/config.json").read_text())
    pooling["word_embedding_dimension"] = 32
    (source / "1_Pooling/config.json").write_text(json.dumps(pooling))
    recipe = out / "tiny-recipe.yaml"
    recipe.write_text("name: tiny\ncandidates:\n  - name: onnx-fp32\n    steps:\n      - pass: export_onnx\n")
    optimize(source, package_dir, FidelityBudget(min_cosine_mean=0.99), recipe=recipe)
    return package_dir


def locust(
    url: str, texts_file: Path, users: int, duration_s: int, zipf: float = 0.0, max_inputs: int = 1
) -> dict[str, float]:
    """One headless closed-loop Locust load (each request 1..``max_inputs`` texts, drawn uniformly or, with
    ``zipf`` = s, by a Zipf law over the texts' ranks); Locust's own final numbers (``--json``)."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as handle:
        handle.write(LOCUSTFILE)
    env = {**os.environ, "RP_TEXTS": str(texts_file), "RP_ZIPF": str(zipf), "RP_MAX_INPUTS": str(max_inputs)}
    csv = Path(tempfile.mkdtemp(prefix="request-path-")) / "load"
    command = [sys.executable, "-m", "locust", "-f", handle.name, "--headless", "--host", url, "--json"]
    command += ["-u", str(users), "-r", str(users), "-t", f"{duration_s}s", "--only-summary", "--loglevel", "ERROR"]
    command += ["--csv", str(csv)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=duration_s + 60)
    os.unlink(handle.name)
    failures_csv = csv.with_name("load_failures.csv")
    errors = failures_csv.read_text().splitlines()[1:4] if failures_csv.exists() else []
    shutil.rmtree(csv.parent, ignore_errors=True)
    stats = next(s for s in json.loads(done.stdout) if s["name"] == "/v1/embeddings")
    elapsed = stats["last_request_timestamp"] - stats["start_time"]
    times = {int(k): v for k, v in stats["response_times"].items()}
    rps = stats["num_requests"] / elapsed if elapsed > 0 else 0.0
    return {
        "requests": stats["num_requests"],
        "failures": stats["num_failures"],
        "rps": rps,
        "items_per_s": rps * (1 + max_inputs) / 2,  # inputs per request are uniform in 1..max_inputs
        "p50_ms": percentile(times, 0.50),
        "p99_ms": percentile(times, 0.99),
        "errors": errors,  # Locust's most frequent failures (method, name, error, occurrences)
    }


def replica_pid(deployment: str) -> int:
    import psutil

    for process in psutil.process_iter(["cmdline"]):
        title = " ".join(process.info["cmdline"] or [])
        if "ServeReplica" in title and deployment in title:
            return process.pid
    raise RuntimeError(f"no replica process of {deployment} found")


def profile(pid: int, seconds: int, out: Path) -> dict[str, Any]:
    """py-spy samples of ``pid`` (all threads, idle frames left out), grouped by component and function."""
    raw = out / "profile.txt"
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    command = [spy, "record", "-p", str(pid), "-d", str(seconds), "-r", "200", "-f", "raw", "-o", str(raw), "--gil"]
    subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True)
    by_component: Counter[str] = Counter()
    by_function: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        frames = stack.split(";")
        total += samples
        by_function[frames[-1]] += samples  # where the time is spent (self time)
        by_component[_component(frames)] += samples
    return {
        "samples": total,
        "components": {name: round(100 * n / total, 1) for name, n in by_component.most_common()},
        "top_functions": [(name, round(100 * n / total, 1)) for name, n in by_function.most_common(15)],
    }


def _component(frames: list[str]) -> str:
    """The component of the innermost frame that belongs to one (self time, attributed by file)."""
    for frame in reversed(frames):
        for name, needles in COMPONENTS:
            if any(needle in frame for needle in ((needles,) if isinstance(needles, str) else needles)):
                return name
    return "other"


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ray import serve

    from corpus import load_split
    from serving.launcher import start
    from serving.ports import free_port

    out: Path = args.out / args.label  # packages are made by the code measured (a package's format may change)
    out.mkdir(parents=True, exist_ok=True)
    texts_file = out / "heldout.json"
    texts_file.write_text(json.dumps(load_split("heldout")))
    tiny = tiny_package(out)
    server = start("127.0.0.1", free_port(), num_cpus=2, threads=1)
    result: dict[str, Any] = {"loads": {}}
    try:
        serve.run(noop_app(), name="bench", route_prefix="/")
        wait_serving(server.url)
        result["loads"]["noop"] = locust(server.url, texts_file, args.users, args.duration)
        serve.delete("bench")
        server.deploy(tiny)
        wait_serving(server.url)
        pid = replica_pid("InferenceService")
        load = _background_locust(server.url, texts_file, args.users, args.duration)
        time.sleep(min(3, args.duration // 4))
        result["profile"] = profile(pid, args.profile_s, out)
        result["loads"]["tiny"] = load()
        if args.default_package:
            for cache_mb, name in ((64, "default-zipf-cache"), (0, "default-zipf-nocache")):
                server.deploy(args.default_package, {"cache_mb": cache_mb})
                wait_serving(server.url)
                result["loads"][name] = locust(server.url, texts_file, args.users, args.duration, zipf=1.1)
    finally:
        server.stop()
    return result


def _background_locust(url: str, texts_file: Path, users: int, duration_s: int) -> Any:
    """Start a load in a thread; the returned function waits for its numbers."""
    import threading

    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.update(stats=locust(url, texts_file, users, duration_s)))
    thread.start()

    def wait() -> dict[str, float]:
        thread.join()
        return box["stats"]

    return wait


def render(result: dict[str, Any]) -> str:
    loads = result["loads"]
    rows = [
        f"| {name} | {v['rps']:.0f} | {v['p50_ms']:.0f} | {v['p99_ms']:.0f} | {v['failures']} |"
        for name, v in loads.items()
    ]
    ratios = [f"| tiny / noop req/s | {loads['tiny']['rps'] / loads['noop']['rps']:.2f} |"]
    if "default-zipf-cache" in loads:
        gain = loads["default-zipf-cache"]["rps"] / loads["default-zipf-nocache"]["rps"]
        ratios.append(f"| Zipf: cache on / off req/s | {gain:.2f} |")
    prof = result["profile"]
    return "\n".join(
        [
            f"## {result['label']}: {result['commit']}, {result['when']}",
            "",
            f"Command: `{result['command']}`  ",
            f"Machine: {result['machine']}  ",
            f"Load: Locust, {result['users']} users, closed loop, {result['duration_s']} s each, one held-out "
            "sentence per request, HAProxy ingress; Locust shares the cores with the server.",
            "",
            "| load | req/s | p50 ms | p99 ms | failures |",
            "|---|---|---|---|---|",
            *rows,
            "",
            "| ratio | value |",
            "|---|---|",
            *ratios,
            "",
            f"Replica profile under the tiny load (py-spy, {prof['samples']} samples, self time by component):",
            "",
            "| component | % of samples |",
            "|---|---|",
            *(f"| {name} | {share} |" for name, share in prof["components"].items()),
            "",
            "Top functions (self time):",
            "",
            *(f"- {share}% `{name}`" for name, share in prof["top_functions"]),
            "",
        ]
    )


def cpu_description() -> str:
    model, flags = platform.processor() or "unknown CPU", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
                flags = " ".join(f for f in line.split(":", 1)[1].split() if f in wanted)
                break
    except OSError:
        pass
    return f"{model} ({flags})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--duration", type=int, default=20, help="seconds per load")
    parser.add_argument("--profile-s", type=int, default=10, help="seconds py-spy samples the tiny replica")
    parser.add_argument("--default-package", type=Path, help="also run the Zipf loads on this package")
    parser.add_argument("--label", default="after")
    parser.add_argument("--out", type=Path, default=Path("runs/request-path"))
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    import serving

    result = run(args)
    code_root = Path(serving.__file__).resolve().parent.parent
    result.update(
        label=args.label,
        users=args.users,
        duration_s=args.duration,
        command="python benchmarks/request_path.py " + " ".join(sys.argv[1:]),
        commit=subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=code_root
        ).stdout.strip(),
        when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        machine=f"{cpu_description()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"ray {version('ray')}, onnxruntime {version('onnxruntime')}",
    )
    (args.out / f"{args.label}.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = render(result)
    (args.out / f"{args.label}.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
