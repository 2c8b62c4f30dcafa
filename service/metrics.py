"""Prometheus metrics of the HTTP API and its inference (job/worker metrics live in service.jobs.metrics).

Naming follows the Prometheus conventions: ``squid_`` prefix, base units (``_seconds``), counters
ending in ``_total``, low-cardinality labels only (route templates, never raw paths; reason codes;
model version). With several uvicorn workers ``squid serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` and
``/metrics`` aggregates every worker's values.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from model.artifact import ArtifactMetadata
from model.domain import GATE_WARNINGS
from model.imaging import DomainReason, Reason
from service.errors import MALFORMED_REQUEST, MISSING_FILE, TOO_LARGE

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))

HTTP_REQUESTS = Counter(
    "squid_http_requests_total",
    "HTTP requests answered, by route template, method and status code.",
    ["endpoint", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "squid_http_request_duration_seconds",
    "Time from request start to the end of the response, by route template, method and status.",
    ["endpoint", "method", "status"],
    buckets=LATENCY_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge(
    "squid_http_requests_in_flight",
    "HTTP requests being processed now.",
    multiprocess_mode="livesum",
)
DECODE_SECONDS = Histogram(
    "squid_decode_duration_seconds",
    "Time to decode one upload into pixels (DICOM LUTs, PNG/JPEG conversion), by detected format.",
    ["format"],
    buckets=STAGE_BUCKETS,
)
PREPROCESS_SECONDS = Histogram(
    "squid_preprocess_duration_seconds",
    "Time to turn decoded pixels into the network input, per image.",
    buckets=STAGE_BUCKETS,
)
INFERENCE_SECONDS = Histogram(
    "squid_inference_duration_seconds",
    "Time of one onnxruntime call (one micro-batch).",
    buckets=STAGE_BUCKETS,
)
QUEUE_WAIT_SECONDS = Histogram(
    "squid_inference_queue_wait_seconds",
    "Time an image waited in the micro-batching queue before its batch started.",
    buckets=STAGE_BUCKETS,
)
BATCH_SIZE = Histogram(
    "squid_inference_batch_size",
    "Images per inference call (micro-batch size).",
    buckets=BATCH_BUCKETS,
)
SCORES = Histogram(
    "squid_anomaly_score",
    "Calibrated anomaly scores (0..1, higher = more anomalous) of scored images, by model version.",
    ["model_version"],
    buckets=SCORE_BUCKETS,
)
ANOMALOUS = Counter(
    "squid_anomalous_total",
    "Scored images at or above the active threshold, by model version.",
    ["model_version"],
)
REJECTIONS = Counter(
    "squid_rejections_total",
    "Uploads refused before scoring, by reason code (the error body's reason).",
    ["reason"],
)
OUT_OF_DOMAIN = Counter(
    "squid_out_of_domain_total",
    "Uploads the domain gate refused (no verdict), by domain reason (several per upload possible).",
    ["reason"],
)
DOMAIN_WARNINGS = Counter(
    "squid_domain_warnings_total",
    "Scored uploads with a domain warning (outside_training_population, advisory image reasons, ...).",
    ["warning"],
)
MODEL_INFO = Gauge(
    "squid_model_info",
    "The loaded artifact (value 1).",
    ["model_name", "model_version", "weights_sha256"],
    multiprocess_mode="livemax",
)
MODEL_THRESHOLD = Gauge(
    "squid_model_threshold",
    "The active decision threshold on the calibrated score.",
    ["model_version"],
    multiprocess_mode="livemax",
)
MODEL_READY = Gauge(
    "squid_model_ready",
    "1 when the model is loaded and warmed up, else 0.",
    multiprocess_mode="livemin",
)


# Every known reason exists from the start (at 0), so rate() and increase() see the first rejection.
for _reason in (*(r.value for r in Reason), TOO_LARGE, MISSING_FILE, MALFORMED_REQUEST):
    REJECTIONS.labels(_reason)
for _reason in DomainReason:
    OUT_OF_DOMAIN.labels(_reason.value)
for _warning in GATE_WARNINGS:
    DOMAIN_WARNINGS.labels(_warning)


def observe_gate(warnings: list[str]) -> None:
    """Count a scored upload's domain warnings (the gate's own codes only)."""
    for code in warnings:
        if code in GATE_WARNINGS:
            DOMAIN_WARNINGS.labels(code).inc()


def set_model(metadata: ArtifactMetadata, threshold: float) -> None:
    version = metadata.model_version
    MODEL_INFO.labels(metadata.model_name, version, metadata.weights_sha256).set(1)
    MODEL_THRESHOLD.labels(version).set(threshold)
    observe_model(version)
    MODEL_READY.set(1)


def observe_model(model_version: str) -> None:
    """Create a model's score series at 0 (workers call this; the API does it in ``set_model``)."""
    SCORES.labels(model_version)
    ANOMALOUS.labels(model_version)


def observe_score(model_version: str, score: float, is_anomalous: bool) -> None:
    SCORES.labels(model_version).observe(score)
    if is_anomalous:
        ANOMALOUS.labels(model_version).inc()


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def render() -> tuple[bytes, str]:
    """The exposition text of this process, or of all workers in multiprocess mode."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def mark_process_dead() -> None:
    """Drop this worker's live gauges (multiprocess mode only)."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(os.getpid())
