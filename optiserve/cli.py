"""``optiserve optimize | serve | loadtest | bench | compare | demo``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from serving import settings
from serving.errors import OptiserveError

log = logging.getLogger("optiserve")


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("optiserve", "optimizers", "serving", "loadtests"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)


def _cmd_optimize(args: argparse.Namespace) -> int:
    from optimizers.chain import optimize
    from optimizers.recipe import load_recipe
    from optimizers.source import bundled_model_dir
    from serving.package import FidelityBudget

    recipe = load_recipe(args.recipe)
    limits = {
        "min_cosine_mean": args.min_cosine_mean,
        "min_cosine_min": args.min_cosine_min,
        "min_top1_agreement": args.min_top1_agreement,
    }
    budget = recipe.budget.model_copy(update={k: v for k, v in limits.items() if v is not None})
    budget = FidelityBudget.model_validate(budget.model_dump())
    result = optimize(
        args.model_dir or bundled_model_dir(),
        args.out,
        budget,
        baseline_out=args.baseline_out,
        threads=args.threads,
        recipe=recipe,
        cache_dir=args.cache_dir,
        device=args.device,
        data_file=args.data,
    )
    print((result.package.root / "report.md").read_text())
    print(f"package written to {result.package.root} (selected {result.selected.name})")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from serving.launcher import run_until_signalled

    overrides = {
        key: value
        for key, value in (("max_batch_size", args.max_batch_size), ("batch_wait_timeout_s", args.batch_wait_s))
        if value is not None
    }
    options: dict[str, object] = {}
    if args.num_gpus:
        options["num_gpus"] = args.num_gpus
    if args.autoscale:
        low, _, high = args.autoscale.partition(":")
        if not (low.isdigit() and high.isdigit() and 0 <= int(low) <= int(high) and int(high) >= 1):
            raise OptiserveError(f"--autoscale takes MIN:MAX replicas (e.g. 1:4), got {args.autoscale!r}")
        options["autoscaling_config"] = {"min_replicas": int(low), "max_replicas": int(high)}
    elif args.replicas:
        options["num_replicas"] = args.replicas
    run_until_signalled(
        args.package_dir,
        args.host,
        args.port,
        overrides,
        address=args.address,
        num_cpus=args.num_cpus,
        threads=args.threads,
        ingress=args.ingress,
        **options,
    )
    return 0


def _shape_env(args: argparse.Namespace) -> dict[str, str]:
    env = {}
    for option, setting in (("stages", settings.STAGES), ("ramp", settings.RAMP), ("spike", settings.SPIKE)):
        if getattr(args, option):
            env[setting.name] = getattr(args, option)
    return env


def _levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise OptiserveError(f"--sweep takes user counts like 1,2,4,8; got {text!r}")
    return levels


def _cmd_loadtest(args: argparse.Namespace) -> int:
    from loadtests.runner import LoadTestConfig, render_summary, run_loadtest

    config = LoadTestConfig(
        host=args.host,
        out_dir=args.out,
        users=args.users,
        duration_s=args.duration,
        max_inputs=args.inputs,
        model=args.model,
        api=args.api,
        shape=args.shape,
        rate=args.rate,
        workers=args.workers,
        env=_shape_env(args),
        slo_p99_ms=args.slo_p99_ms,
        max_error_rate=args.max_error_rate,
        plots=not args.no_plots,
        label=args.label,
    )
    if args.sweep:
        from loadtests.sweep import run_sweep

        result = run_sweep(config, _levels(args.sweep), args.slo_p99_ms, max_step_s=args.max_step_s)
        print((args.out / f"{args.label}_sweep.md").read_text())
        return 0 if result["knee"] is not None else 1
    summary = run_loadtest(config)
    print(render_summary(summary))
    return 1 if summary.failures or summary.slo_broken else 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from optiserve.demo import run_demo

    if (args.baseline is None) != (args.optimized is None):
        raise OptiserveError("give both --baseline and --optimized, or neither (the bundled model is optimized)")
    comparison = run_demo(
        args.out,
        users=args.users,
        duration_s=args.duration,
        port=args.port,
        baseline=args.baseline,
        optimized=args.optimized,
        slo_p99_ms=args.slo_p99_ms,
        max_inputs=args.inputs,
    )
    return 0 if comparison["ok"] else 1


def _cmd_compare(args: argparse.Namespace) -> int:
    from loadtests.compare import compare

    try:
        print(compare(args.a, args.b))
    except ValueError as exc:
        raise OptiserveError(str(exc)) from None
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from optiserve.demo import run_demo

    comparison = run_demo(args.out, users=args.users, duration_s=args.duration, port=args.port)
    print(json.dumps({"comparison": str(args.out / "comparison.md")}))
    return 0 if comparison["ok"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="optiserve", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("optimize", help="optimize a model into a model package")
    p.add_argument(
        "model_dir",
        nargs="?",
        type=Path,
        help="Hugging Face encoder or classifier directory, or an ONNX file with tokenizer.json beside it "
        "(default: bundled MiniLM)",
    )
    p.add_argument("--out", type=Path, required=True, help="package directory to write")
    p.add_argument("--baseline-out", type=Path, help="also write the unoptimized source as a package here")
    p.add_argument(
        "--recipe",
        default="cpu",
        help="recipe YAML file, or a built-in one: cpu (default), cpu-full, cpu-distill, gpu (optimizers/recipes/)",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where candidates are checked and profiled")
    p.add_argument(
        "--data",
        type=Path,
        metavar="FILE",
        help="your own texts (UTF-8, one per line, or .jsonl with a text field; at least 100) for calibration, "
        "validation, distillation and the held-out fidelity (default: the built-in corpus)",
    )
    p.add_argument("--cache-dir", type=Path, help=settings.CACHE.help("pass cache (default: ~/.cache/optiserve/chain)"))
    p.add_argument("--min-cosine-mean", type=float, help="override the recipe's budget")
    p.add_argument("--min-cosine-min", type=float, help="override the recipe's budget")
    p.add_argument("--min-top1-agreement", type=float, help="override the recipe's budget (classifiers)")
    p.add_argument("--threads", type=int, help="runtime threads to profile with (default: 1, as a replica runs)")
    p.set_defaults(run=_cmd_optimize)

    p = sub.add_parser("serve", help="serve one or more model packages with Ray Serve (routed by model name)")
    p.add_argument("package_dir", type=Path, nargs="+", help="package directories; model names must differ")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--address", help="Ray cluster address to join (default: start a local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs for a local Ray (default: all)")
    p.add_argument(
        "--threads",
        type=int,
        default=settings.THREADS.get() or None,
        help=settings.THREADS.help("runtime threads (and Ray CPUs) per replica (default: 1)"),
    )
    p.add_argument("--max-batch-size", type=int, help="items per dynamic batch (default: from the package)")
    p.add_argument("--batch-wait-s", type=float, help="max wait to fill a batch (default: from the package)")
    p.add_argument("--num-gpus", type=float, help="GPUs per replica, fractions allowed (default: 0, CPU)")
    p.add_argument("--replicas", type=int, help="fixed number of replicas (default: 1)")
    p.add_argument("--autoscale", metavar="MIN:MAX", help="autoscale between MIN and MAX replicas")
    p.add_argument(
        "--ingress",
        choices=["haproxy", "proxy"],
        default=settings.INGRESS.get(),
        help=settings.INGRESS.help("Ray Serve's HAProxy ingress (default) or its Python proxy"),
    )
    p.set_defaults(run=_cmd_serve)

    p = sub.add_parser("loadtest", help="run a bounded headless Locust load against a server")
    p.add_argument("--host", required=True, help="server URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--api", choices=["embeddings", "kserve", "classify"], default="embeddings")
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--duration", type=int, default=20, help="seconds (with --shape: upper bound)")
    p.add_argument(
        "--inputs",
        type=int,
        default=settings.INPUTS.get(),
        help=settings.INPUTS.help("each request carries 1..N sentences (default: 1)"),
    )
    p.add_argument(
        "--model",
        default=settings.MODEL.get() or None,
        help=settings.MODEL.help("model name to send (default: none, the server's own)"),
    )
    p.add_argument(
        "--rate",
        type=float,
        default=settings.RATE.get() or None,
        help=settings.RATE.help("target requests/s over all users (default: closed loop)"),
    )
    p.add_argument("--shape", choices=["step", "ramp", "spike"], help="a Locust load shape (loadtests/shapes.py)")
    p.add_argument("--stages", help=settings.STAGES.help("step shape: users:seconds,… (e.g. 1:10,2:10,4:10)"))
    p.add_argument("--ramp", help=settings.RAMP.help("ramp shape: from:to:seconds (e.g. 1:16:60)"))
    p.add_argument(
        "--spike", help=settings.SPIKE.help("spike shape: base:spike:before_s:during_s:after_s (e.g. 2:16:20:10:20)")
    )
    p.add_argument("--sweep", metavar="USERS", help="goodput sweep over user counts, e.g. 1,2,4,8,16")
    p.add_argument("--max-step-s", type=float, default=30.0, help="sweep: longest hold per step (seconds)")
    p.add_argument("--workers", type=int, default=0, help="distributed Locust: master + N workers on 127.0.0.1")
    p.add_argument("--slo-p99-ms", type=float, help="exit non-zero if client p99 is above this (sweep: the SLO)")
    p.add_argument("--max-error-rate", type=float, help="exit non-zero if the failed share is above this")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--out", type=Path, default=Path("runs/loadtest"))
    p.add_argument("--label", default="loadtest")
    p.set_defaults(run=_cmd_loadtest)

    p = sub.add_parser("bench", help="baseline vs optimized package under identical load, with ratios")
    p.add_argument("--baseline", type=Path, help="baseline package (default: the bundled model's torch fp32)")
    p.add_argument("--optimized", type=Path, help="optimized package (default: optimize the bundled model)")
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--duration", type=int, default=20, help="seconds of load per package")
    p.add_argument("--inputs", type=int, default=1, help="each request carries 1..N sentences")
    p.add_argument("--slo-p99-ms", type=float, help="also report goodput: requests/s answered within this")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    p.set_defaults(run=_cmd_bench)

    p = sub.add_parser("compare", help="compare two load-test summaries (<label>.json from loadtest)")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.set_defaults(run=_cmd_compare)

    p = sub.add_parser("demo", help="optimize the bundled model, serve baseline and optimized, load-test, compare")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--duration", type=int, default=20, help="seconds of load per variant")
    p.add_argument("--port", type=int, default=0, help="HTTP port (default: a free one)")
    p.set_defaults(run=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()  # flag defaults come from OPTISERVE_* variables: a bad one is a one-line error
    except OptiserveError as exc:
        print(f"optiserve: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return int(args.run(args))
    except OptiserveError as exc:
        print(f"optiserve: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
