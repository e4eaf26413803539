#!/usr/bin/env bash
# Install PyTorch into the environment of the given pip: the CUDA build where an NVIDIA GPU is visible,
# otherwise the CPU build (never several GB of CUDA wheels on a CPU-only machine).
set -euo pipefail
PIP=${1:-pip}
VERSION=${TORCH_VERSION:-2.13.0}
if "$PIP" show torch >/dev/null 2>&1; then
    echo "torch already installed: $("$PIP" show torch | awk '/^Version/{print $2}')"
    exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "$PIP" install "torch==${VERSION}"
else
    # A local CPU wheel (pip's find-links) first; else PyTorch's CPU index.
    "$PIP" install "torch==${VERSION}+cpu" 2>/dev/null \
        || "$PIP" install "torch==${VERSION}+cpu" --index-url https://download.pytorch.org/whl/cpu
fi
