"""``optiserve optimize | serve | loadtest | bench | compare | demo``: the command line.

Results go to stdout, progress and errors to stderr (:mod:`optiserve.quiet` decides how much); a failure is one
``optiserve: error: …`` line (with ``-v``, the traceback too) and an exit code from :mod:`optiserve.exit_codes`.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import socket
import sys
import tempfile
import traceback
import urllib.error
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadtests import settings as loadtest_settings
from loadtests.flags import add_request_flags
from modelpkg import settings
from modelpkg.errors import OptiserveError
from modelpkg.remote import location
from modelpkg.version import __version__
from optiserve import exit_codes, quiet
from serving.control import CanaryLimits

if TYPE_CHECKING:
    from optimizers.candidate import Candidate

log = logging.getLogger("optiserve")
DESCRIPTION = (
    "Optimize a model into a verified model package (ONNX, quantized, within a fidelity budget), serve packages "
    "with Ray Serve (OpenAI-style and KServe v2 routes), and load-test them."
)
EPILOG = """exit codes:
  0  done, every target held
  1  error: a file, the network, a package, a recipe, a failed step
  2  usage: the command line (or an OPTISERVE_* variable) is wrong
  3  a target was missed: the fidelity budget, a load test's SLO or error-rate limit, a sweep's knee

-v/--verbose and -q/--quiet go before or after the command. 'optiserve COMMAND -h' shows each command's options."""


class UsageError(OptiserveError):
    """The command line names something impossible; exit code 2, as argparse's own errors."""


class TargetMissedError(OptiserveError):
    """The command ran, but a target it was given was missed (the fidelity budget); exit code 3."""


class HelpFormatter(argparse.HelpFormatter):
    """Help that shows each option's default where its text does not already say it (before ``[env: …]``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        unset = default in (None, argparse.SUPPRESS, "", []) or default is False
        if "default" in text or not action.option_strings or unset:
            return text
        head, env, tail = text.partition(" [env: ")
        return f"{head} (default: %(default)s){env}{tail}"


def _candidates_json(candidates: list[Candidate]) -> list[dict[str, Any]]:
    """What ``optimize --json`` says of each candidate (report.json has everything)."""
    return [
        {
            "name": c.name,
            "status": c.status,
            "reason": c.reason,
            "items_per_s": c.items_per_s,
            "fidelity": c.fidelity.model_dump(exclude_none=True) if c.fidelity else None,
        }
        for c in candidates
    ]


def _widths(text: str) -> tuple[int, ...]:
    """``--matryoshka-dims 512,256,128`` as widths."""
    try:
        widths = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected widths separated by commas (512,256,128), got {text!r}") from None
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"expected positive widths separated by commas, got {text!r}")
    return widths


def _cmd_optimize(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from modelpkg.manifest import FidelityBudget
    from optimizers.chain import optimize
    from optimizers.recipe import load_plan
    from optimizers.selection import BudgetNotMetError
    from optimizers.source import bundled_model_dir, takes_images

    source_dir = args.model_dir or bundled_model_dir()
    plan = load_plan(args.recipe or ("cpu-images" if takes_images(source_dir) else "cpu"))
    limits = {
        "min_cosine_mean": args.min_cosine_mean,
        "min_cosine_min": args.min_cosine_min,
        "min_top1_agreement": args.min_top1_agreement,
        "min_kendall_tau": args.min_kendall_tau,
    }
    budget = plan.recipe.budget.model_copy(update={k: v for k, v in limits.items() if v is not None})
    if args.allow_batch_dependent:
        budget = budget.model_copy(update={"min_batch_invariance": None})
    try:
        budget = FidelityBudget.model_validate(budget.model_dump())
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = "--" + "-".join(map(str, first["loc"])).replace("_", "-") if first["loc"] else "budget"
        raise UsageError(f"{flag}: {first['msg']}") from None
    out = _optimize_into(args.out)
    try:
        result = optimize(
            source_dir,
            out,
            budget,
            baseline_out=args.baseline_out,
            threads=args.threads,
            recipe=plan,
            cache_dir=args.cache_dir,
            device=args.device,
            data_file=args.data,
            matryoshka_dims=args.matryoshka_dims,
        )
    except BudgetNotMetError as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc), "candidates": _candidates_json(exc.candidates)}))
        raise TargetMissedError(str(exc)) from exc
    root = result.package.root
    where = _published(root, args.out)
    if args.json:
        summary = {
            "ok": True,
            "package": str(where),
            "report": str(root / "report.md"),
            "selected": result.selected.name,
            "budget": budget.model_dump(exclude_none=True),
            "candidates": _candidates_json(result.candidates),
        }
        print(json.dumps(summary))
        return exit_codes.OK
    if args.verbosity != "quiet":
        print((root / "report.md").read_text())
    print(f"package written to {where} (selected {result.selected.name})")
    return exit_codes.OK


def _cmd_serve(args: argparse.Namespace) -> int:
    from serving.launcher import run_until_signalled

    overrides = {
        key: value
        for key, value in (
            ("max_batch_size", args.max_batch_size),
            ("batch_wait_timeout_s", args.batch_wait_s),
            ("cache_mb", args.cache_mb),
        )
        if value is not None
    }
    options: dict[str, object] = {}
    if args.num_gpus:
        options["num_gpus"] = args.num_gpus
    if args.autoscale:
        low, _, high = args.autoscale.partition(":")
        if not (low.isdigit() and high.isdigit() and 0 <= int(low) <= int(high) and int(high) >= 1):
            raise UsageError(f"--autoscale takes MIN:MAX replicas (e.g. 1:4), got {args.autoscale!r}")
        options["autoscaling_config"] = {"min_replicas": int(low), "max_replicas": int(high)}
    elif args.replicas:
        options["num_replicas"] = args.replicas
    if args.served_model_name:
        if len(args.served_model_name) > len(args.package_dir):
            raise UsageError("--served-model-name is given more often than there are packages")
        options["served_names"] = list(args.served_model_name)
    threads = args.threads
    if args.address is None:  # on a cluster, the host is bound on its nodes, not here
        _check_bind(args.host, args.port, args.grpc_port)
        if not (args.autoscale or args.replicas or threads or args.num_gpus):
            threads, replicas = _measured_layout(args.package_dir, args.num_cpus or os.cpu_count() or 1)
            if replicas > 1:
                options["num_replicas"] = replicas
    run_until_signalled(
        args.package_dir,
        args.host,
        args.port,
        overrides,
        address=args.address,
        num_cpus=args.num_cpus,
        threads=threads,
        ingress=args.ingress,
        grpc_port=args.grpc_port,
        **options,
    )
    return exit_codes.OK


def _print_change(what: str, outcome: Any, packages: list[dict[str, str]], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"ok": True, "seconds": round(outcome.seconds, 2), "packages": packages,
                          "replicas": outcome.replicas}))  # fmt: skip
        return
    timings = [m.get("last_change", {}) for r in outcome.replicas for m in r["models"].values()]
    loads = [t["load_and_warm_up_s"] for t in timings if "load_and_warm_up_s" in t]
    drains = [t["drain_s"] for t in timings if "drain_s" in t]
    detail = f"; load and warm-up {max(loads):.1f} s, drain {max(drains):.1f} s (slowest replica)" if loads else ""
    served = ", ".join(f"{p['name']} from {p['path']}" for p in packages)
    print(f"{what}: {len(outcome.replicas)} replica(s) serve {served} after {outcome.seconds:.1f} s{detail}")


def _cmd_deploy(args: argparse.Namespace) -> int:
    from serving import control

    if args.canary is not None:
        return _deploy_canary(args)
    _, outcome = control.deploy(args.package_dir, args.address, args.served_model_name, args.timeout)
    _print_change("deployed", outcome, control.load_spec().packages, args.json)
    return exit_codes.OK


def _deploy_canary(args: argparse.Namespace) -> int:
    from serving import control

    if len(args.package_dir) != 1 or len(args.served_model_name or []) > 1:
        raise UsageError("--canary takes one package (and at most one --served-model-name)")
    limits = control.CanaryLimits(
        fraction=args.canary,
        window_s=args.canary_window,
        min_requests=args.canary_min_requests,
        max_error_rate=args.max_error_rate,
        max_latency_ratio=args.max_latency_ratio,
        min_agreement=args.min_agreement,
    )
    name = (args.served_model_name or [None])[0]
    try:
        reason, figures = control.canary(args.package_dir[0], limits, args.address, name, args.timeout)
    except control.CanaryRolledBackError as exc:
        raise TargetMissedError(str(exc)) from None
    if args.json:
        print(json.dumps({"outcome": "promoted", "reason": reason, **figures}))
    else:
        print(f"canary promoted ({reason}): {json.dumps(figures)}")
    return exit_codes.OK


def _cmd_rollback(args: argparse.Namespace) -> int:
    from serving import control

    _, outcome = control.rollback(args.address, args.timeout)
    _print_change("rolled back", outcome, control.load_spec().packages, args.json)
    return exit_codes.OK


def _cmd_status(args: argparse.Namespace) -> int:
    from serving import control

    state = control.status(args.address)
    if args.json:
        print(json.dumps(state))
        return exit_codes.OK
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(state["replica_states"].items())) or "none"
    print(f"server {state['url']}: replicas {counts}; change {state['generation']}")
    for package in state["packages"]:
        print(f"  {package['name']}: package {package['package']} from {package['path']}")
    for replica in state["replicas"]:
        models = []
        for name, model in sorted(replica["models"].items()):
            line = f"{name} {(model['serving'] or {}).get('package', '-')}"
            if model["loading"]:
                line += f", loading {model['loading']['path']}"
            if model["draining"]:
                line += f", draining {' '.join(model['draining'])}"
            if model["failed"]:
                line += f", failed {model['failed']['path']}: {model['failed']['error'][:200]}"
            models.append(line)
        stopping = " (stopping: not ready)" if replica["draining"] else ""
        print(f"  replica {replica['replica']} on node {replica['node']}{stopping}: {'; '.join(models)}")
    return exit_codes.OK


def _optimize_into(out: str | Path) -> Path:
    """Where the chain writes the package: ``out``, or for a URI a local directory it is published from."""
    from modelpkg.remote import is_remote

    return Path(tempfile.mkdtemp(prefix="optiserve-publish-")) / "package" if is_remote(out) else Path(out)


def _published(root: Path, out: str | Path) -> Path | str:
    """``root``, or the URI it was published to when ``out`` is one (s3://, gs://)."""
    from modelpkg.remote import is_remote, publish, shown

    if not is_remote(out):
        return root
    publish(root, str(out))
    log.info("published %s to %s", root, shown(str(out)))
    return shown(str(out))


def _measured_layout(package_dirs: list[Path], cores: int) -> tuple[int | None, int]:
    """(threads per replica, replicas) for a local server with no --replicas/--threads: what the first package's
    chain measured on its machine (``serving.replica_layout``), applied to this one's cores; else (None, 1)."""
    from modelpkg.package import load_package

    try:
        layout = load_package(package_dirs[0]).manifest.serving.replica_layout
    except OptiserveError:
        return None, 1  # the launcher names the problem before anything starts
    if layout == "replicas" and cores > 1:
        log.info("layout: %d single-thread replicas (measured by the chain; --replicas or --threads override)", cores)
        return 1, cores
    if layout == "threads" and cores > 1:
        log.info("layout: one replica with %d threads (measured by the chain; --replicas or --threads override)", cores)
        return cores, 1
    return None, 1


def _check_bind(host: str, port: int, *more_ports: int | None) -> None:
    """Fail before Ray starts when ``host`` does not resolve, is not an address of this machine, or a port is
    taken (Ray would otherwise fail later with a traceback); ``more_ports`` that are None are not used."""
    for other in more_ports:
        if other is not None:
            _check_bind(host, other)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise OptiserveError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise OptiserveError(f"--port {port}: already in use on {host}") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise OptiserveError(f"--host {host}: not an address of this machine") from None
            raise OptiserveError(f"--host {host} --port {port}: cannot listen there ({exc.strerror})") from None


def _shape_env(args: argparse.Namespace) -> dict[str, str]:
    env = {}
    for option, setting in (
        ("stages", loadtest_settings.STAGES),
        ("ramp", loadtest_settings.RAMP),
        ("spike", loadtest_settings.SPIKE),
    ):
        if getattr(args, option):
            env[setting.name] = getattr(args, option)
    return env


def _levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise UsageError(f"--sweep takes user counts like 1,2,4,8; got {text!r}")
    return levels


def _cmd_loadtest(args: argparse.Namespace) -> int:
    from loadtests.runner import LoadTestConfig, default_label, render_summary, run_loadtest

    args.label = args.label or default_label()
    config = LoadTestConfig(
        host=args.host,
        out_dir=args.out,
        users=args.users,
        duration_s=args.duration,
        max_inputs=args.inputs,
        model=args.model or None,
        api=args.api,
        shape=args.shape,
        rate=args.rate or None,
        rate_per_user=args.rate_per_user or None,
        seed=args.seed,
        workers=args.workers,
        env=_shape_env(args),
        slo_p99_ms=args.slo_p99_ms,
        max_error_rate=args.max_error_rate,
        plots=not args.no_plots,
        label=args.label,
        headers=tuple(args.header),
        api_key=args.api_key or None,
        payload=Path(args.payload) if args.payload else None,
        server_metrics=not args.no_server_metrics,
    )
    if args.sweep:
        from loadtests.sweep import run_sweep

        result = run_sweep(config, _levels(args.sweep), args.slo_p99_ms, max_step_s=args.max_step_s)
        print((args.out / f"{args.label}_sweep.md").read_text())
        return exit_codes.OK if result["knee"] is not None else exit_codes.UNMET
    summary = run_loadtest(config)
    print(render_summary(summary))
    if summary.slo_broken:  # an SLO or error-rate limit the user set was missed
        return exit_codes.UNMET
    return exit_codes.ERROR if summary.failures and args.max_error_rate is None else exit_codes.OK


def _cmd_bench(args: argparse.Namespace) -> int:
    from optiserve.demo import run_demo

    if (args.baseline is None) != (args.optimized is None):
        raise UsageError("give both --baseline and --optimized, or neither (the bundled model is optimized)")
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
    return exit_codes.OK if comparison["ok"] else exit_codes.ERROR


def _cmd_compare(args: argparse.Namespace) -> int:
    from loadtests.compare import compare

    try:
        print(compare(args.a, args.b))
    except ValueError as exc:
        raise OptiserveError(str(exc)) from None
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from optiserve.demo import run_demo

    # With --json, stdout carries the JSON alone: the human summary goes to stderr.
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        comparison = run_demo(args.out, users=args.users, duration_s=args.duration, port=args.port)
    if args.json:
        print(json.dumps({**comparison, "comparison": str(args.out / "comparison.md")}))
    return exit_codes.OK if comparison["ok"] else exit_codes.ERROR  # failed requests under load


def _add_verbosity(parser: argparse.ArgumentParser, default: str | None) -> None:
    """-v/-q on the top-level parser (``default`` set) and again on each command's, where they default to
    nothing, so ``optiserve -v serve`` and ``optiserve serve -v`` both count."""
    group = parser.add_mutually_exclusive_group()
    unset = argparse.SUPPRESS if default is None else default
    options = (
        ("-v", "--verbose", "verbose", "show everything: library warnings and progress bars, DEBUG lines, tracebacks"),
        ("-q", "--quiet", "quiet", "only warnings, errors and the final result (for scripts)"),
    )
    for short, long, const, text in options:
        group.add_argument(short, long, dest="verbosity", action="store_const", const=const, default=unset, help=text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optiserve",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"optiserve {__version__}")
    _add_verbosity(parser, "normal")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("optimize", help="optimize a model into a model package")
    p.add_argument(
        "model_dir",
        nargs="?",
        type=Path,
        help="Hugging Face encoder or classifier directory, an ONNX file with tokenizer.json beside it, or a hub id "
        "(org/name) found in the local Hugging Face cache (default: bundled MiniLM)",
    )
    p.add_argument(
        "--out", type=location, required=True, help="package directory to write, or s3:// / gs:// URI to publish to"
    )
    p.add_argument("--baseline-out", type=Path, help="also write the unoptimized source as a package here")
    p.add_argument(
        "--recipe",
        help="recipe YAML file, or a built-in one: cpu (the default for text), cpu-images (the default for image "
        "classifiers), cpu-full, cpu-distill, gpu (optimizers/recipes/)",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where candidates are checked and profiled")
    p.add_argument(
        "--data",
        type=Path,
        metavar="FILE|DIR",
        help="your own texts (UTF-8, one per line, or .jsonl with a text field; at least 100), or for an image model "
        "a directory of your images (JPEG, PNG, WebP; at least 40), for calibration, validation, distillation and "
        "the held-out fidelity (default: the built-in corpus, or the built-in images)",
    )
    p.add_argument("--cache-dir", type=Path, help=settings.CACHE.help("pass cache (default: ~/.cache/optiserve/chain)"))
    p.add_argument(
        "--matryoshka-dims",
        type=_widths,
        metavar="W,W,...",
        help="the model was trained to be cut to these widths (Matryoshka; read from its sentence-transformers model "
        "card where it names them): requests may then ask for fewer dimensions, and the report measures each",
    )
    p.add_argument("--min-cosine-mean", type=float, help="override the recipe's budget")
    p.add_argument("--min-cosine-min", type=float, help="override the recipe's budget")
    p.add_argument("--min-top1-agreement", type=float, help="override the recipe's budget (classifiers, rerankers)")
    p.add_argument("--min-kendall-tau", type=float, help="override the recipe's budget (rerankers)")
    p.add_argument(
        "--allow-batch-dependent",
        action="store_true",
        help="admit candidates whose outputs move with their batch-mates beyond rounding (dynamic int8 with "
        "activation_scales: tensor)",
    )
    p.add_argument("--threads", type=int, help="runtime threads to profile with (default: 1, as a replica runs)")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout instead of the report")
    p.set_defaults(run=_cmd_optimize)

    p = sub.add_parser("serve", help="serve one or more model packages with Ray Serve (routed by model name)")
    p.add_argument(
        "package_dir",
        type=location,
        nargs="+",
        help="package directories or URIs (s3://, gs://, https://); model names must differ",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port")
    p.add_argument(
        "--grpc-port",
        type=int,
        help="also serve KServe v2 (Open Inference Protocol) over gRPC on this port (Triton's: 8001; default: off)",
    )
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
    p.add_argument(
        "--cache-mb",
        type=float,
        help="response cache per model, MiB; 0 turns it off (default: the package's)",
    )
    p.add_argument("--num-gpus", type=float, help="GPUs per replica, fractions allowed (default: 0, CPU)")
    p.add_argument(
        "--served-model-name",
        action="append",
        metavar="NAME",
        help="the name clients use for the package in the same position (repeat for several; default: the "
        "package's own)",
    )
    p.add_argument("--replicas", type=int, help="fixed number of replicas (default: 1)")
    p.add_argument("--autoscale", metavar="MIN:MAX", help="autoscale between MIN and MAX replicas")
    p.add_argument(
        "--ingress",
        choices=["haproxy", "proxy"],
        default=settings.INGRESS.get(),
        help=settings.INGRESS.help("Ray Serve's HAProxy ingress (default) or its Python proxy"),
    )
    p.set_defaults(run=_cmd_serve)

    address_help = "the server's Ray cluster address HOST:PORT; auto: the `optiserve serve` on this machine"
    p = sub.add_parser("deploy", help="serve other packages on a running server, replica by replica, no downtime")
    p.add_argument(
        "package_dir",
        type=location,
        nargs="+",
        help="packages (directories or URIs); each replaces the model of its name",
    )
    p.add_argument("--address", default="auto", help=address_help)
    p.add_argument("--served-model-name", action="append", metavar="NAME", help="as on serve")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds for every replica to take the packages")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    canary = CanaryLimits()
    p.add_argument(
        "--canary",
        type=float,
        metavar="FRACTION",
        help="run the package beside the served one on this share of its requests, then promote it or roll it back",
    )
    p.add_argument("--canary-window", type=float, default=canary.window_s, help="seconds the canary is watched")
    p.add_argument("--canary-min-requests", type=int, default=canary.min_requests, help="requests it must answer")
    p.add_argument("--max-error-rate", type=float, default=canary.max_error_rate, help="canary error rate limit")
    p.add_argument(
        "--max-latency-ratio", type=float, default=canary.max_latency_ratio, help="canary / stable mean latency"
    )
    p.add_argument(
        "--min-agreement",
        type=float,
        default=canary.min_agreement,
        help="same source model: cosine mean (classifiers: top-1 agreement) with the served package",
    )
    p.set_defaults(run=_cmd_deploy)
    p = sub.add_parser("rollback", help="serve the packages served before the last deploy")
    p.add_argument("--address", default="auto", help=address_help)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds for every replica to take the packages")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.set_defaults(run=_cmd_rollback)
    p = sub.add_parser("status", help="what a running server serves, replica by replica")
    p.add_argument("--address", default="auto", help=address_help)
    p.add_argument("--json", action="store_true", help="print the state as JSON")
    p.set_defaults(run=_cmd_status)

    p = sub.add_parser("loadtest", help="run a bounded headless Locust load against a server")
    p.add_argument("--host", required=True, help="server URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--api", choices=["embeddings", "kserve", "classify", "rerank"], default="embeddings")
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--duration", type=int, default=20, help="seconds (with --shape: upper bound)")
    add_request_flags(p)
    p.add_argument("--shape", choices=["step", "ramp", "spike"], help="a Locust load shape (loadtests/shapes.py)")
    p.add_argument("--stages", help=loadtest_settings.STAGES.help("step shape: users:seconds,… (e.g. 1:10,2:10,4:10)"))
    p.add_argument("--ramp", help=loadtest_settings.RAMP.help("ramp shape: from:to:seconds (e.g. 1:16:60)"))
    p.add_argument(
        "--spike",
        help=loadtest_settings.SPIKE.help("spike shape: base:spike:before_s:during_s:after_s (e.g. 2:16:20:10:20)"),
    )
    p.add_argument("--sweep", metavar="USERS", help="goodput sweep over user counts, e.g. 1,2,4,8,16")
    p.add_argument("--max-step-s", type=float, default=30.0, help="sweep: longest hold per step (seconds)")
    p.add_argument("--workers", type=int, default=0, help="distributed Locust: master + N workers on 127.0.0.1")
    p.add_argument(
        "--slo-p99-ms", type=float, help="exit 3 (unmet) if client p99 is above this (sweep: the SLO; no knee: 3)"
    )
    p.add_argument(
        "--max-error-rate",
        type=float,
        help="exit 3 (unmet) if the failed share is above this (without it, any failure exits 1)",
    )
    p.add_argument(
        "--no-server-metrics",
        action="store_true",
        help="do not read the server's optiserve /metrics (TEI, Infinity, any other server): client-side report",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--out", type=Path, default=Path("runs/loadtest"))
    p.add_argument("--label", help="file name prefix of the results (default: loadtest-YYYYMMDD-HHMMSS)")
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
    p.add_argument("--json", action="store_true", help="print the comparison as JSON on stdout (summary: stderr)")
    p.set_defaults(run=_cmd_demo)
    for command in sub.choices.values():
        command.formatter_class = HelpFormatter
        for action in command._actions:  # an option without help text still shows its default
            if action.help is None and action.option_strings and action.default not in (None, False):
                action.help = "(default: %(default)s)"
        _add_verbosity(command, None)
    return parser


def _fail(exc: BaseException, verbose: bool, code: int) -> int:
    """One ``optiserve: error: …`` line on stderr (after the traceback, with ``-v``); returns ``code``."""
    if verbose:
        traceback.print_exception(exc)
    cause = getattr(exc, "cause", None)  # a RayTaskError wraps what the remote task raised
    shown = cause if isinstance(cause, BaseException) else exc
    if isinstance(shown, urllib.error.URLError):  # "<urlopen error …>" otherwise
        message = f"cannot reach the server: {shown.reason}"
    elif isinstance(shown, OptiserveError | OSError):
        message = str(shown)
    else:
        message = f"{type(shown).__name__}: {shown}"
    if not isinstance(shown, OptiserveError):  # ours may list problems on indented lines; others: the first line
        lines = message.strip().splitlines() or [type(shown).__name__]
        more = " …" if len(lines) > 1 else ""
        message = lines[0] + more + ("" if verbose or isinstance(shown, OSError) else " (-v shows the traceback)")
    print(f"optiserve: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (:mod:`optiserve.exit_codes`)."""
    try:
        parser = build_parser()  # flag defaults come from OPTISERVE_* variables: a bad one is a one-line error
    except OptiserveError as exc:
        return _fail(exc, False, exit_codes.USAGE)
    args = parser.parse_args(argv)
    verbose = args.verbosity == "verbose"
    quiet.apply(args.verbosity)
    try:
        return int(args.run(args))
    except TargetMissedError as exc:
        return _fail(exc, verbose, exit_codes.UNMET)
    except UsageError as exc:
        return _fail(exc, verbose, exit_codes.USAGE)
    except KeyboardInterrupt:
        print("optiserve: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 -- every failure is one line and an exit code
        return _fail(exc, verbose, exit_codes.ERROR)


if __name__ == "__main__":
    sys.exit(main())
