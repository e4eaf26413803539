"""A GPU replica under load (issue 8, items 2 and 3).

    .venv/bin/python benchmarks/gpu/served.py --package runs/gpu/package [--users 64,256] [--duration 30]
                                              [--replicas 1] [--workers 8]

Serves the package with Ray Serve on this machine (`num_gpus=1` per replica, HAProxy ingress) and drives it with
Locust (distributed: a master and ``--workers`` processes) at each user count, one held-out sentence per
request. Records req/s, p50/p99 and errors per load, with the replica's device and the model's own batch-1
latency beside it, in ``OUT/served.json`` and ``.md``. Without CUDA it runs on CPU (the replica reports why), so
the script itself is tested anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from loadtests.runner import LoadTestConfig, client_stats, start_locust, wait_locust  # noqa: E402
from modelpkg.package import load_package  # noqa: E402
from serving.launcher import start  # noqa: E402
from serving.ports import free_port  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, default=ROOT / "runs" / "gpu" / "package")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu")
    parser.add_argument("--users", default="64,256")
    parser.add_argument("--duration", type=int, default=30)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    args = parser.parse_args()
    import torch

    gpus = 1 if torch.cuda.is_available() else 0
    manifest = load_package(args.package).manifest
    args.out.mkdir(parents=True, exist_ok=True)
    server = start("127.0.0.1", free_port(), num_cpus=os.cpu_count(), num_gpus=max(gpus, 1))
    loads = []
    try:
        server.deploy(args.package, num_gpus=1 if gpus else 0, num_replicas=args.replicas)
        metadata = httpx.get(f"{server.url}/v2/models/{manifest.name}", timeout=30).json()
        replica = metadata["parameters"]["optiserve"]
        for users in (int(u) for u in args.users.split(",")):
            label = f"users{users}"
            cfg = LoadTestConfig(
                host=server.url,
                out_dir=args.out / "locust",
                users=users,
                duration_s=args.duration,
                max_inputs=1,
                workers=args.workers,
                label=label,
                plots=False,
            )
            wait_locust(start_locust(cfg), cfg)
            stats = client_stats(args.out / "locust" / f"{label}_locust_stats.csv")
            loads.append({"users": users, **stats})
            print(json.dumps(loads[-1]), flush=True)
    finally:
        server.stop()
    profile = {row.call_items: row.model_dump() for row in manifest.profile}
    report = {
        "package": {
            "name": manifest.name,
            "version": manifest.version,
            "precision": manifest.precision,
            "runtime": manifest.runtime,
        },
        "replica": replica,
        "replicas": args.replicas,
        "locust_workers": args.workers,
        "model_profile": profile,
        "loads": loads,
        "command": " ".join(sys.argv),
    }
    (args.out / "served.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# GPU replica under load",
        "",
        f"Package {manifest.name} {manifest.version} ({manifest.runtime} {manifest.precision}); replica on "
        f"{replica['device']} ({replica['device_reason']}); {args.replicas} replica(s); Locust with "
        f"{args.workers} workers on the same machine; command `{report['command']}`.",
        "",
        "| users | req/s | p50 ms | p99 ms | failures |",
        "|---|---|---|---|---|",
        *(
            f"| {r['users']} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['failures']} |"
            for r in loads
        ),
    ]
    (args.out / "served.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
