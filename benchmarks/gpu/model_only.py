"""GPU variants of the bundled MiniLM, model only (issue 8, items 1 and 3).

    .venv/bin/python benchmarks/gpu/model_only.py [--out runs/gpu] [--device cuda]

Runs the chain with the `gpu` recipe on the device (torch fp16 / bf16, fp16 + CUDA graphs, torch.compile,
ONNX Runtime fp16 on the CUDA EP, TensorRT; each skipped with its reason where it cannot run), then measures
every built variant with the runtime a replica would use:

- batch-1 latency: one 12-token sentence, median and p99 of 200 calls (after 20 warm-up calls);
- throughput at batch 512 x sequence 128 (synthetic ids, full attention), median of 10 calls;
- fidelity against the torch fp32 source on the 1,000 held-out sentences (from the chain).

Writes ``OUT/model_only.json`` and ``.md`` with the device, driver and library versions. On a machine without
CUDA it still runs (everything on CPU, GPU variants skipped) so that the script itself is tested.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from modelpkg.tokenizer import EncodedBatch  # noqa: E402
from optimizers.chain import optimize  # noqa: E402
from optimizers.evaluate import OutputsEvaluator  # noqa: E402
from optimizers.selection import BudgetNotMetError  # noqa: E402
from optimizers.source import SourceModel, bundled_model_dir  # noqa: E402

LIBRARIES = ("torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "transformers", "ray")


def environment(device: str) -> dict[str, object]:
    import torch

    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = version(lib)
        except PackageNotFoundError:
            versions[lib] = None
    driver = (
        subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if device == "cuda"
        else ""
    )
    return {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "nvidia_smi": driver,
        "cuda": torch.version.cuda,
        "libraries": versions,
    }


def synthetic(rows: int, width: int) -> EncodedBatch:
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 29000, size=(rows, width), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    return EncodedBatch(ids, np.ones_like(ids), np.zeros_like(ids), np.full(rows, width, dtype=np.int64))


def timed(fn, runs: int, warmup: int) -> list[float]:
    import torch

    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()  # every runtime returns host numpy arrays, so the call includes the copy back
        samples.append(time.perf_counter() - start)
    return samples


def measure(runtime, encoder, big_rows: int, big_width: int) -> dict[str, float]:
    single = encoder.pad(encoder.encode(["A short sentence to embed, twelve tokens or so."]))
    one = timed(lambda: runtime.run(single), runs=200, warmup=20)
    big = synthetic(big_rows, big_width)
    many = timed(lambda: runtime.run(big), runs=10, warmup=2)
    return {
        "batch1_p50_ms": statistics.median(one) * 1e3,
        "batch1_p99_ms": float(np.percentile(one, 99)) * 1e3,
        f"batch{big_rows}x{big_width}_seq_per_s": big_rows / statistics.median(many),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu")
    parser.add_argument("--model", type=Path, default=None, help="source model (default: the bundled MiniLM)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda if available")
    parser.add_argument("--big-batch", type=int, default=512)
    parser.add_argument("--big-width", type=int, default=128)
    args = parser.parse_args()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = args.model or bundled_model_dir()
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        result = optimize(model, args.out / "package", recipe="gpu", device=device)
        candidates = result.candidates
    except BudgetNotMetError as exc:
        candidates = exc.candidates
    source = SourceModel.from_dir(model)
    evaluator = OutputsEvaluator(source, 1, [], device=device)
    rows = []
    for c in candidates:
        row: dict[str, object] = {"variant": c.name, "status": c.status, "reason": c.reason}
        if c.artifact is not None:
            runtime = evaluator.pipeline(c.artifact).runtime
            row.update(measure(runtime, evaluator.encoder, args.big_batch, args.big_width))
            row.update(runtime_device=runtime.device, device_reason=runtime.device_reason)
            row.update(fidelity=c.fidelity.model_dump(exclude_none=True) if c.fidelity else None)
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {"environment": environment(device), "command": " ".join(sys.argv), "variants": rows}
    (args.out / "model_only.json").write_text(json.dumps(report, indent=2) + "\n")
    big = f"batch{args.big_batch}x{args.big_width}_seq_per_s"
    lines = [
        "# GPU variants, model only",
        "",
        f"Device: {report['environment']['device']} ({report['environment']['nvidia_smi']}); "
        f"command `{report['command']}`.",
        "",
        "| variant | status | batch-1 p50 ms | batch-1 p99 ms | "
        f"{args.big_batch}x{args.big_width} seq/s | cos mean | cos min |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f = r.get("fidelity") or {}
        if "batch1_p50_ms" not in r:
            lines.append(f"| {r['variant']} | {r['status']}: {r['reason']} | - | - | - | - | - |")
            continue
        lines.append(
            f"| {r['variant']} | {r['status']} on {r['runtime_device']} | {r['batch1_p50_ms']:.3f} | "
            f"{r['batch1_p99_ms']:.3f} | {r[big]:.0f} | {f.get('cosine_mean', float('nan')):.4f} | "
            f"{f.get('cosine_min', float('nan')):.4f} |"
        )
    (args.out / "model_only.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
