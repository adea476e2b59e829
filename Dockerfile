# syntax=docker/dockerfile:1
# kvsched image (docs/deploy.md). Targets:
#   docker build -t kvsched .                         simulated engine (default, last stage: cpu)
#   docker build --target gpu -t kvsched:gpu .        Hugging Face engine on CUDA torch
# Build arguments: PYTHON_IMAGE (exact tag, or tag@sha256:digest to pin the digest; any Debian
# bookworm base with Python 3.11 and `python` on PATH works: .ci/build-image.sh passes a
# debootstrapped one to `buildah bud`), TORCH_VERSION / TORCH_INDEX_URL (gpu target's CUDA wheel).
# The app runs as uid/gid 10001. tests/deploy/test_dockerfile.py parses this file and runs the
# build stages' RUN steps in a fresh venv, so keep those steps plain shell: `python -m venv
# /opt/venv`, `pip install ...`; .ci/build-image.sh builds the image and serves from it.

ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

# ---- deps: the dependency layer, from pyproject.toml alone (source changes do not rebuild it) --
FROM ${PYTHON_IMAGE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:$PATH"
COPY pyproject.toml README.md ./
COPY deploy/docker/requirements.py deploy/docker/requirements.py
RUN python deploy/docker/requirements.py pyproject.toml > requirements.txt \
    && pip install -r requirements.txt

# ---- deps-gpu: CUDA torch first (its own index), then the hf extra, which finds torch present --
FROM deps AS deps-gpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
    && python deploy/docker/requirements.py pyproject.toml --extra hf > requirements-hf.txt \
    && pip install -r requirements-hf.txt
# vLLM slot (issue 7): `--engine vllm` needs vllm==0.33.0 (the package's `vllm` extra); add
#   RUN pip install "vllm==0.33.0"  here (its torch pin must match TORCH_VERSION above)

# ---- build / build-gpu: the package itself, without touching the dependency layer ----
FROM deps AS build
COPY algorithms algorithms
COPY predictors predictors
COPY simulator simulator
COPY service service
RUN pip install --no-deps . \
    && kvsched --help

FROM deps-gpu AS build-gpu
COPY algorithms algorithms
COPY predictors predictors
COPY simulator simulator
COPY service service
RUN pip install --no-deps . \
    && kvsched --help

# ---- runtime: no compilers, no source tree; a non-root user ----
FROM ${PYTHON_IMAGE} AS runtime
# lightgbm's wheel needs the OpenMP runtime (a shared library, not a build tool)
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 kvsched \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp kvsched
ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    KVSCHED_HOST=0.0.0.0 \
    KVSCHED_PORT=8000
WORKDIR /tmp
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('KVSCHED_PORT', '8000') + '/health', timeout=2)"]
ENTRYPOINT ["kvsched"]
CMD ["serve"]

# ---- gpu: `--target gpu`; serve with the hf engine on a mounted local model directory ----
FROM runtime AS gpu
ENV KVSCHED_ENGINE=hf \
    HF_HOME=/tmp/huggingface \
    HF_HUB_OFFLINE=1
COPY --from=build-gpu /opt/venv /opt/venv
USER 10001:10001

# ---- cpu (default target, last): the simulated engine ----
FROM runtime AS cpu
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
