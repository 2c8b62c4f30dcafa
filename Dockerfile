# syntax=docker/dockerfile:1.7
# Images of the scoring service (API and batch workers); no torch, no compilers at run time.
#
#   docker build --target cpu -t squid-cxr:cpu .   slim Python + onnxruntime (the default target)
#   docker build --target gpu -t squid-cxr:gpu .   CUDA 13 + cuDNN 9 runtime + onnxruntime-gpu
#
# Both carry the shipped model (package data model/artifacts/*.onnx); SQUID_MODEL_PATH pointing at a
# mounted artifact replaces it at run time. No secret is baked in: SQUID_API_KEY comes from the
# environment. See docs/deployment.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# onnxruntime-gpu wheels on PyPI link CUDA 13 (libcudart.so.13, libcublas.so.13) and load cuDNN 9:
# keep the CUDA major of this base image and ORT_GPU_VERSION in step.
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04
ARG ORT_GPU_VERSION=1.31.1

# ---- build (CPU): a virtual environment with the service and its dependencies ---------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/squid
COPY pyproject.toml README.md LICENSE ./
COPY model ./model
COPY service ./service
COPY cli ./cli
COPY deploy/image ./deploy/image
COPY samples ./samples
# The train extra (torch) is never installed; prune-venv.sh drops what the service never loads;
# a+rX because the artifact may be checked out 0600; selfcheck.py then proves the pruned
# environment still serves (API, worker, DICOM decoders, the shipped model) for a non-owner user.
RUN /opt/squid/bin/pip install --no-compile . \
    && sh deploy/image/prune-venv.sh /opt/squid \
    && chmod -R a+rX /opt/squid \
    && /opt/squid/bin/python deploy/image/selfcheck.py samples/*.dcm samples/*.jpeg

# ---- cpu runtime -----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu
LABEL org.opencontainers.image.title="squid-cxr" \
      org.opencontainers.image.description="SQUID chest X-ray anomaly scoring service (CPU)" \
      org.opencontainers.image.licenses="MIT"
ENV PATH=/opt/squid/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    SQUID_HOST=0.0.0.0 SQUID_PORT=8000 \
    SQUID_RESULTS_DIR=/data/results SQUID_IMPORT_ROOT=/data/import
RUN groupadd --system --gid 10001 squid \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/squid --create-home squid \
    && mkdir -p /data/results /data/import \
    && chown 10001:10001 /data/results
COPY --from=build /opt/squid /opt/squid
COPY --chmod=0755 deploy/healthcheck.py /usr/local/bin/squid-healthcheck
USER 10001:10001
WORKDIR /home/squid
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 CMD ["squid-healthcheck"]
CMD ["squid", "serve"]

# ---- build (GPU): the same environment on the CUDA image's Python, onnxruntime swapped for -gpu ------
FROM ${CUDA_IMAGE} AS build-gpu
ARG ORT_GPU_VERSION
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 \
    DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
RUN python3 -m venv /opt/squid
COPY pyproject.toml README.md LICENSE ./
COPY model ./model
COPY service ./service
COPY cli ./cli
COPY deploy/image ./deploy/image
COPY samples ./samples
# onnxruntime and onnxruntime-gpu must never share an environment (same module name). The build
# host needs no GPU: the check asks onnxruntime for the CUDA provider, sessions fall back to CPU.
RUN /opt/squid/bin/pip install --no-compile . \
    && /opt/squid/bin/pip uninstall -y onnxruntime \
    && /opt/squid/bin/pip install --no-compile "onnxruntime-gpu==${ORT_GPU_VERSION}" \
    && sh deploy/image/prune-venv.sh /opt/squid \
    && chmod -R a+rX /opt/squid \
    && /opt/squid/bin/python deploy/image/selfcheck.py --provider CUDAExecutionProvider samples/*.dcm samples/*.jpeg

# ---- gpu runtime (batch worker by default) ---------------------------------------------------------
FROM ${CUDA_IMAGE} AS gpu
LABEL org.opencontainers.image.title="squid-cxr" \
      org.opencontainers.image.description="SQUID chest X-ray anomaly scoring service (CUDA)" \
      org.opencontainers.image.licenses="MIT"
ENV PATH=/opt/squid/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DEBIAN_FRONTEND=noninteractive \
    SQUID_HOST=0.0.0.0 SQUID_PORT=8000 \
    SQUID_RESULTS_DIR=/data/results SQUID_IMPORT_ROOT=/data/import \
    SQUID_WORKER_METRICS_PORT=9101 \
    SQUID_HEALTHCHECK_URL=http://127.0.0.1:9101/metrics
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 squid \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/squid --create-home squid \
    && mkdir -p /data/results /data/import \
    && chown 10001:10001 /data/results
COPY --from=build-gpu /opt/squid /opt/squid
COPY --chmod=0755 deploy/healthcheck.py /usr/local/bin/squid-healthcheck
USER 10001:10001
WORKDIR /home/squid
EXPOSE 8000 9101
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD ["squid-healthcheck"]
# One pool process per GPU; `squid serve` runs the API on the GPU instead (set SQUID_HEALTHCHECK_URL).
CMD ["squid", "worker", "--concurrency", "1"]

# `docker build .` without --target gives the CPU image.
FROM cpu
