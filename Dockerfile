# syntax=docker/dockerfile:1.7
# Targets:
#   cpu (default): slim Python runtime with onnxruntime; no torch, no compilers.
#   gpu:           CUDA 12 + cuDNN 9 runtime with onnxruntime-gpu (CPU fallback when no GPU).
# Both bake in the shipped default model; SQUID_MODEL_PATH replaces it at run time.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

# ---- build: wheels for the service (no torch; the train extra is never installed) ----------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model ./model
COPY service ./service
COPY cli ./cli
RUN pip wheel --wheel-dir /wheels .

# ---- cpu runtime ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SQUID_HOST=0.0.0.0 SQUID_PORT=8000 SQUID_RESULTS_DIR=/data/results SQUID_IMPORT_ROOT=/data/import
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels squid-cxr \
    && groupadd --system --gid 10001 squid \
    && useradd --system --uid 10001 --gid squid --home-dir /home/squid --create-home squid \
    && mkdir -p /data/results /data/import && chown -R squid:squid /data
USER squid
WORKDIR /home/squid
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os,sys,urllib.request; sys.exit(0 if urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('SQUID_PORT','8000')}/healthz\", timeout=4).status == 200 else 1)"]
CMD ["squid", "serve"]

# ---- gpu runtime ------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS gpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    SQUID_HOST=0.0.0.0 SQUID_PORT=8000 SQUID_RESULTS_DIR=/data/results SQUID_IMPORT_ROOT=/data/import
# onnxruntime and onnxruntime-gpu must never share an environment: swap the CPU build out.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip \
    && rm -rf /var/lib/apt/lists/* \
    && pip3 install --no-index --find-links=/wheels squid-cxr \
    && pip3 uninstall -y onnxruntime \
    && pip3 install "onnxruntime-gpu>=1.20,<2" \
    && groupadd --system --gid 10001 squid \
    && useradd --system --uid 10001 --gid squid --home-dir /home/squid --create-home squid \
    && mkdir -p /data/results /data/import && chown -R squid:squid /data
USER squid
WORKDIR /home/squid
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os,sys,urllib.request; sys.exit(0 if urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('SQUID_PORT','8000')}/healthz\", timeout=4).status == 200 else 1)"]
CMD ["squid", "worker"]

# The default target is the CPU image.
FROM cpu
