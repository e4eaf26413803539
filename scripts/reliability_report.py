"""Render docs/reliability.md from the figures the reliability tests and the soak wrote.

.venv/bin/pytest -s tests/integration/test_{faults,hardening,fuzz,operations,cluster}.py # runs/reliability/figures.json
.venv/bin/python benchmarks/soak.py --minutes 60                                      # runs/soak/soak.json
.venv/bin/python scripts/reliability_report.py                                        # docs/reliability.md
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "runs" / "reliability" / "figures.json"
SOAK = ROOT / "runs" / "soak" / "soak.json"
OUT = ROOT / "docs" / "reliability.md"


def _commit() -> str:
    run = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return run.stdout.strip() or "unknown"


def render(figures: dict, soak: dict) -> str:
    kill, config = figures["replica_kill"], figures["config_changes"]
    overload, deadline, fuzz = figures["overload"], figures["deadline"], figures["fuzz"]
    s = soak["summary"]
    unrecorded = "not recorded"
    commits = [
        *(figures[key].get("commit", unrecorded) for key in ("replica_kill", "config_changes", "overload", "deadline")),
        fuzz.get("commit", unrecorded),
        soak.get("commit", unrecorded),
    ]
    rows = [
        (
            f"Replica killed with SIGKILL under load ({kill['workers']} closed-loop clients)",
            f"{kill['requests']} requests, {kill['failed']} failed; {kill['in_flight_at_kill']} were in flight at the "
            f"kill; replacement answering after {kill['replaced_after_s']} s; requests sent meanwhile waited and "
            "succeeded",
            "tests/integration/test_faults.py",
        ),
        (
            "user_config change, then replica replacement, under load",
            f"{config['requests']} requests, {config['failed']} failed (old replica drained)",
            "tests/integration/test_faults.py",
        ),
        (
            f"Overload: {overload['requests']} concurrent requests, "
            f"replica queue of {overload['max_queued_items']} items",
            f"{overload['accepted']} served (median {overload['accepted_median_ms']} ms), {overload['rejected_503']} "
            f"answered 503 + Retry-After (median {overload['rejected_median_ms']} ms, max "
            f"{overload['rejected_max_ms']} ms), none lost",
            "tests/integration/test_hardening.py",
        ),
        (
            f"Queue deadline {deadline['queue_timeout_s']} s, {deadline['requests']} concurrent requests",
            f"{deadline['served']} served, {deadline['dropped_504']} answered 504 without running "
            f"({deadline['items_computed']:.0f} items computed)",
            "tests/integration/test_hardening.py",
        ),
        (
            "Fuzzing every route of the OpenAPI schema (schemathesis)",
            f"{fuzz['requests']:.0f} requests, by status {fuzz['by_status']}; no 5xx; healthy afterwards "
            f"(limits during the run: {fuzz.get('limits', {})})",
            "tests/integration/test_fuzz.py",
        ),
        (
            f"Soak: {soak['minutes']:g} min at half the knee ({soak['rate']:.0f} of {soak['knee_rps']:.0f} req/s), "
            f"1..{soak['max_inputs']} inputs/request, an upgrade and a rollback",
            f"{s['requests']:.0f} requests, {s['failed']:.0f} failed; replica memory {s['rss_start_mb']:.0f} -> "
            f"{s['rss_end_mb']:.0f} MB ({s['rss_growth_pct']:+.1f}%); open files and threads per replica: "
            + "; ".join(
                f"{c['what']} {c['fds_before']} -> {c['fds_after']} and {c['threads_before']} -> {c['threads_after']}"
                for c in soak["changes"]
            )
            + f"; server p99 {s['p99_first_ms']:.0f} -> {s['p99_last_ms']:.0f} ms",
            "benchmarks/soak.py",
        ),
    ]
    day2, day2_commits = operations_rows(figures)
    rows += day2
    commits += day2_commits
    lines = [
        "# Reliability figures",
        "",
        f"Produced by `scripts/reliability_report.py` on {datetime.now(UTC):%Y-%m-%d} at commit {_commit()}, "
        f"{platform.machine()} with {os.cpu_count()} cores, Python {platform.python_version()}, ray {version('ray')}, "
        f"onnxruntime {version('onnxruntime')}. Every row is one run of the named test or script (commands in the "
        "script's docstring), at the commit in its row; the load generator shares the server's cores.",
        "",
        "| scenario | result | source | commit |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | `{c}` | {commit} |" for (a, b, c), commit in zip(rows, commits, strict=True)],
        "",
        "Not covered by a live test: a replica whose runtime breaks or hangs is restarted by Ray Serve when "
        "`check_health` raises (tested at the replica level in `tests/integration/test_faults.py`; the restart itself "
        "is Ray's).",
    ]
    return "\n".join(lines)


def operations_rows(figures: dict) -> tuple[list[tuple[str, str, str]], list[str]]:
    """Rows for the day-2 figures the tests wrote (tests/integration/test_operations.py,
    tests/integration/test_cluster.py), where present."""
    rows: list[tuple[str, str, str]] = []
    commits: list[str] = []
    if upgrade := figures.get("upgrade_rollback"):
        rows.append(
            (
                "Upgrade to a package of another width, then rollback, under Locust (4 users, 1..4 inputs)",
                f"{upgrade['locust_requests']:.0f} Locust requests, {upgrade['failed']} failed; upgrade "
                f"{upgrade['upgrade']['seconds']:.1f} s, rollback {upgrade['rollback']['seconds']:.1f} s; every answer "
                "of a second client named the package whose vector width it carried; same replica processes throughout",
                "tests/integration/test_operations.py",
            )
        )
        commits.append(upgrade.get("commit", "not recorded"))
    if refused := figures.get("refused_deploys"):
        rows.append(
            (
                "Deploys refused: a corrupt file, a package that fails its warm-up",
                f"exit 1 with one line each; {refused['answers_meanwhile']} answers meanwhile, all 200 from the "
                "running package",
                "tests/integration/test_operations.py",
            )
        )
        commits.append(refused.get("commit", "not recorded"))
    if canary := figures.get("canary"):
        promoted = canary["promoted"]
        rows.append(
            (
                "Canaries at 50%: one whose outputs disagree, one re-optimized from the same source",
                f"rolled back (exit 3): {canary['rolled_back'].split('rolled back: ')[-1]}; promoted: cosine mean "
                f"{promoted['agreement']['cosine_mean']:.4f}, {promoted['window']['canary']['requests']:.0f} canary "
                f"requests in the window, {promoted['window']['canary']['errors']:.0f} errors; no client request "
                "failed",
                "tests/integration/test_operations.py",
            )
        )
        commits.append(canary.get("commit", "not recorded"))
    if drain := figures.get("sigterm_drain"):
        rows.append(
            (
                "SIGTERM with 3 requests in flight",
                f"answers {drain['answers']}; readiness {drain['not_ready_answer']} before the port closed; exit 0 "
                f"{drain['stopped_s']:.1f} s after the signal",
                "tests/integration/test_operations.py",
            )
        )
        commits.append(drain.get("commit", "not recorded"))
    if (cluster := figures.get("cluster")) and "served_by_lost_node_before_kill" in cluster.get("node_loss", {}):
        loss = cluster["node_loss"]
        rows.append(
            (
                "Worker node's processes SIGKILLed under load (4 clients, HAProxy on both nodes)",
                f"{loss['requests']} requests, {loss['failed']} failed; {loss['served_by_lost_node_before_kill']} "
                f"answered by the lost node before the kill; a replica on a replacement node answering "
                f"{loss['replicas_back_s']:.1f} s after the kill",
                "tests/integration/test_cluster.py",
            )
        )
        commits.append(cluster.get("commit", "not recorded"))
    return rows, commits


def kept_sections(previous: str) -> str:
    """The sections other scripts own in the page (each between ``<!-- NAME: begin -->`` and
    ``<!-- NAME: end -->``, e.g. ``benchmarks/attacks.py``'s rows), carried over when this one rewrites it."""
    found = re.finditer(r"<!-- (.+?): begin -->.*?<!-- \1: end -->", previous, flags=re.DOTALL)
    return "".join(f"\n{block.group(0)}\n" for block in found)


def main() -> int:
    missing = [str(p) for p in (FIGURES, SOAK) if not p.exists()]
    if missing:
        print(f"missing {missing}: run the commands in this script's docstring first", file=sys.stderr)
        return 1
    text = render(json.loads(FIGURES.read_text()), json.loads(SOAK.read_text())) + "\n"
    OUT.write_text(text + kept_sections(OUT.read_text() if OUT.exists() else ""))
    print(OUT.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
