"""The optimizer chain against sentence-transformers and its own backends, on CPU, in one run.

    scripts/st-venv.sh                      # once: sentence-transformers[onnx,openvino] in .venv-st
    .venv/bin/python benchmarks/chain_cpu.py [--rounds 5] [--threads 2] [--recipes minilm-quant minilm-distill]

Runs the chain on the bundled MiniLM with the recipes named (benchmarks/recipes/minilm-quant.yaml: every
no-retraining candidate, ONNX Runtime, OpenVINO and torch; minilm-distill.yaml: distilled students), reusing the
pass cache. Then, on the 1,000 held-out sentences, it measures in interleaved rounds every candidate the chain
built (our text pipeline, length-sorted batches of 32, in this process) and sentence-transformers as a user runs
it, each backend in its own process from .venv-st (fp32, bf16, onnx, openvino, int8 onnx; see st_worker.py;
skipped with a note where .venv-st is missing). Each variant's median throughput is printed as a ratio to
sentence-transformers fp32 and to the best lossless sentence-transformers backend, with fidelity against
sentence-transformers fp32's embeddings, the CPU named. Writes benchmarks/results/chain_cpu.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from corpus import load_split  # noqa: E402
from modelpkg.hardware import detect  # noqa: E402
from modelpkg.manifest import BATCH_INVARIANT_COSINE, Fidelity  # noqa: E402
from optimizers.candidate import Candidate  # noqa: E402
from optimizers.chain import optimize  # noqa: E402
from optimizers.evaluate import OutputsEvaluator  # noqa: E402
from optimizers.fidelity import output_fidelity  # noqa: E402
from optimizers.selection import BudgetNotMetError  # noqa: E402
from optimizers.source import SourceModel, bundled_model_dir  # noqa: E402

RESULT_FILE = ROOT / "benchmarks" / "results" / "chain_cpu.md"
ST_VENV_PYTHON = ROOT / ".venv-st" / "bin" / "python"
ST_BACKENDS = ("torch", "bf16", "onnx", "openvino", "onnx-int8")
REFERENCE = "st-torch"  # sentence-transformers fp32: the ratio's and the fidelity's reference
# Tiers (issue 14): name, cosine mean, cosine min, target ratio to the best lossless sentence-transformers backend
TIERS = (
    ("lossless", 0.999, 0.995, 1.3),
    ("no retraining", 0.995, 0.98, 1.5),
    ("compressed", 0.97, -1.0, 3.0),
)

DEFAULT_TARGET = 2.0  # the default package: the no-retraining tier, batch-invariant, twice the best lossless ST


RECIPES = ("minilm-quant", "minilm-distill")


def build(out: Path, threads: int, recipes: list[str]) -> dict[str, tuple[str, Candidate]]:
    """Run the recipes; every built candidate by name, with the recipe it came from."""
    built: dict[str, tuple[str, Candidate]] = {}
    for recipe in recipes:
        try:
            result = optimize(
                bundled_model_dir(),
                out / recipe,
                recipe=ROOT / "benchmarks" / "recipes" / f"{recipe}.yaml",
                threads=threads,
            )
            candidates = result.candidates
            print(f"{recipe}: built, selected {result.selected.name}", flush=True)
        except BudgetNotMetError as exc:
            print(f"{recipe}: {exc}", flush=True)
            candidates = exc.candidates
        for c in candidates:
            if c.artifact is not None and c.name not in built:
                built[c.name] = (recipe, c)
    return built


class StWorker:
    """A sentence-transformers backend in its own process (benchmarks/st_worker.py under .venv-st)."""

    def __init__(self, backend: str, texts_file: Path, threads: int) -> None:
        self.process = subprocess.Popen(
            [
                str(ST_VENV_PYTHON),
                str(ROOT / "benchmarks" / "st_worker.py"),
                "--backend",
                backend,
                "--texts",
                str(texts_file),
                "--threads",
                str(threads),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._expect("ready")

    def _ask(self, command: str) -> str:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip()

    def _expect(self, word: str) -> None:
        assert self.process.stdout
        line = self.process.stdout.readline().strip()
        if line != word:
            raise RuntimeError(f"st_worker said {line!r} instead of {word!r} (exit {self.process.poll()})")

    def seconds(self) -> float:
        return float(self._ask("run"))

    def outputs(self, scratch: Path) -> np.ndarray:
        self._ask(f"dump {scratch}")
        return np.asarray(json.loads(scratch.read_text()), dtype=np.float32)

    def close(self) -> None:
        with contextlib.suppress(OSError, AssertionError):
            self._ask("quit")
        self.process.wait(timeout=30)


def measure(built: dict[str, tuple[str, Candidate]], rounds: int, threads: int, scratch: Path) -> tuple[dict, dict]:
    texts = load_split("heldout")
    source = SourceModel.from_dir(bundled_model_dir())
    evaluator = OutputsEvaluator(source, threads, texts)
    texts_file = scratch / "texts.json"
    texts_file.write_text(json.dumps(texts))
    timers: dict[str, Callable[[], float]] = {}
    outputs: dict[str, np.ndarray] = {}
    workers = []
    if ST_VENV_PYTHON.exists():
        for backend in ST_BACKENDS:
            worker = StWorker(backend, texts_file, threads)
            workers.append(worker)
            timers[f"st-{backend}"] = worker.seconds
            outputs[f"st-{backend}"] = worker.outputs(scratch / f"st-{backend}.json")
    else:
        print(f"{ST_VENV_PYTHON} not found: run scripts/st-venv.sh to compare sentence-transformers", flush=True)
    for name, (_, candidate) in built.items():
        pipeline = evaluator.pipeline(candidate.artifact)  # type: ignore[arg-type]
        outputs[name] = pipeline.run(texts, max_items=32)[0]  # warm-up, and the outputs compared

        def timed(p=pipeline) -> float:
            start = time.perf_counter()
            p.run(texts, max_items=32)
            return time.perf_counter() - start

        timers[name] = timed
    speeds: dict[str, list[float]] = {name: [] for name in timers}
    try:
        for _ in range(rounds):
            for name, timer in timers.items():
                speeds[name].append(len(texts) / timer())
    finally:
        for worker in workers:
            worker.close()
    medians = {name: statistics.median(v) for name, v in speeds.items()}
    reference = outputs.get(REFERENCE, outputs.get("torch-fp32"))
    fidelity = {name: output_fidelity(reference, out, task="embedding") for name, out in outputs.items()}
    return medians, fidelity


def cpu_line() -> str:
    here = detect()
    return f"{here.cpu_model}, {here.cpu_count} cores, ISA flags: {', '.join(here.cpu_flags) or 'none recorded'}"


def _within(fidelity: Fidelity, min_mean: float, min_min: float) -> bool:
    return fidelity.cosine_mean >= min_mean and fidelity.cosine_min >= min_min


def _recall(built: dict[str, tuple[str, Candidate]], name: str) -> str:
    """The candidate's recall@10 with the source's beside it, from the chain's own held-out evaluation (a
    half-sentence query finding its sentence among the held-out ones); "-" for sentence-transformers."""
    fidelity = built[name][1].fidelity if name in built else None
    if fidelity is None or fidelity.recall_at_10 is None:
        return "-"
    return f"{fidelity.recall_at_10:.3f} ({fidelity.source_recall_at_10:.3f})"


def _invariance(built: dict[str, tuple[str, Candidate]], name: str) -> float | None:
    """How far the candidate's outputs move with their batch-mates (the chain's measurement; None for ST)."""
    fidelity = built[name][1].fidelity if name in built else None
    return fidelity.batch_invariance if fidelity is not None else None


def render(
    built: dict, medians: dict, fidelity: dict, rounds: int, threads: int, recipes: list[str], result: Path
) -> str:
    result_arg = "" if result == RESULT_FILE else f" --result {result.resolve().relative_to(ROOT)}"
    base = medians.get(REFERENCE, medians.get("torch-fp32", 1.0))
    st_lossless = [n for n in medians if n.startswith("st-") and _within(fidelity[n], *TIERS[0][1:3])]
    best_st = max(st_lossless, key=lambda n: medians[n], default=None)
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    lines = [
        "# Optimizer chain vs sentence-transformers and its backends (CPU)",
        "",
        f"Command: `.venv/bin/python benchmarks/chain_cpu.py --rounds {rounds} --threads {threads} --recipes "
        f"{' '.join(recipes)}{result_arg}` at commit {commit}.",
        f"CPU: {cpu_line()}.",
        f"1,000 held-out sentences, batches of 32 sorted by length, {threads} threads, median of {rounds} "
        "interleaved rounds; each sentence-transformers backend in its own process (.venv-st). Fidelity is against "
        "sentence-transformers fp32 (`st-torch`).",
        "",
        f"| variant | recipe | items/s | × ST fp32 | × best lossless ST ({best_st or '-'}) | cos mean | cos min "
        "| NN@10 | recall@10 (source) | batch invariance |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    best_speed = medians[best_st] if best_st else float("nan")
    for name in sorted(medians, key=lambda n: -medians[n]):
        f = fidelity[name]
        recipe = built[name][0] if name in built else "sentence-transformers"
        lines.append(
            f"| {name} | {recipe} | {medians[name]:.0f} | {medians[name] / base:.2f} | "
            f"{medians[name] / best_speed:.2f} | {f.cosine_mean:.4f} | {f.cosine_min:.4f} | "
            f"{f.nn_agreement_at10:.3f} | {_recall(built, name)} | "
            f"{'-' if (inv := _invariance(built, name)) is None else f'{inv:.5f}'} |"
        )
    lines.append("")
    for tier, min_mean, min_min, target in TIERS:
        ours = [n for n in medians if n in built and n != "torch-fp32" and _within(fidelity[n], min_mean, min_min)]
        label = f"{tier} (cos mean >= {min_mean}" + (f", min >= {min_min})" if min_min > -1 else ")")
        if not ours or best_st is None:
            lines.append(f"- {label}: no chain variant within that fidelity (target {target}×: missed).")
            continue
        best = max(ours, key=lambda n: medians[n])
        ratio = medians[best] / best_speed
        verdict = "met" if ratio >= target else f"missed by {target - ratio:.2f}×"
        lines.append(f"- {label}: best {best} at {ratio:.2f}× {best_st} (target {target}×: {verdict}).")
    _, min_mean, min_min, _ = TIERS[1]
    invariant = [
        n
        for n in medians
        if n in built
        and _within(fidelity[n], min_mean, min_min)
        and (_invariance(built, n) or 0.0) >= BATCH_INVARIANT_COSINE
    ]
    if invariant and best_st is not None:
        best = max(invariant, key=lambda n: medians[n])
        ratio = medians[best] / best_speed
        verdict = "met" if ratio >= DEFAULT_TARGET else f"missed by {DEFAULT_TARGET - ratio:.2f}×"
        lines.append(
            f"- default package (cos mean >= {min_mean}, min >= {min_min}, batch invariance >= "
            f"{BATCH_INVARIANT_COSINE}): best {best} at {ratio:.2f}× {best_st} (target {DEFAULT_TARGET}×: {verdict})."
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-chain")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), help="benchmarks/recipes/NAME.yaml to build")
    parser.add_argument("--no-write", action="store_true", help="print only; keep the recorded result file")
    parser.add_argument("--result", type=Path, default=RESULT_FILE, help="the Markdown file written")
    args = parser.parse_args()
    built = build(args.out, args.threads, args.recipes)
    print(f"measuring {len(built)} variants and sentence-transformers, {args.rounds} rounds", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    medians, fidelity = measure(built, args.rounds, args.threads, args.out)
    text = render(built, medians, fidelity, args.rounds, args.threads, args.recipes, args.result)
    print(text)
    if not args.no_write:
        args.result.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
