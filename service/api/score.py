"""``POST /score``: one chest X-ray in (DICOM, PNG or JPEG), its anomaly score out."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from model.imaging import ImageInfo, ImageRejected, OutOfDomain
from model.steps import verdict
from service import metrics
from service.api.dicom_output import OUTPUT_HELP, RESPONSES, Output, check_input, dicom_response
from service.batching import BatcherClosedError
from service.deps import StateDep
from service.errors import ERROR_SCHEMA, NOT_READY, ApiError, image_status
from service.payload import result_payload
from service.uploads import DECLARED_FORMAT, read_upload

log = logging.getLogger("squid.score")
router = APIRouter(tags=["scoring"])

CONTENT_TYPE_MISMATCH = "content_type_mismatch"


class ModelRef(BaseModel):
    name: str
    version: str
    sha256: str


class Timing(BaseModel):
    decode: float
    preprocess: float
    queue: float = Field(description="wait in the micro-batching queue")
    inference: float = Field(description="the onnxruntime call of this image's micro-batch")


class ScoreResponse(BaseModel):
    score: float = Field(description="calibrated anomaly score, 0..1, higher = more anomalous")
    is_anomalous: bool
    threshold: float
    raw_score: float = Field(
        description=(
            "the discriminator's logit (high = normal) on what the artifact's config says it judges: the "
            "input image (`score_on=input`, the shipped default) or the in-painted reconstruction"
        )
    )
    model: ModelRef
    input: ImageInfo
    warnings: list[str]
    timing_ms: Timing
    heatmap_png_base64: str | None = Field(
        None,
        description=(
            "with ?heatmap=true: overlay PNG of the score's evidence map: integrated-gradients "
            "attribution of the discriminator's logit from the training normals' mean image, smoothed; "
            "coloured where the image is less normal than the normals usually are, on a fixed scale "
            "(GET /model: anomaly_map.display_max). Its pixels sum to the raw score's deviation from "
            "the normals' mean. Evidence for the score, not a lesion segmentation"
        ),
    )
    preview_png_base64: str | None = Field(None, description="with ?preview=true: decoded input PNG")


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}


_BINARY = {"schema": {"type": "string", "format": "binary"}}
REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
            }
        },
        "application/dicom": _BINARY,
        "image/png": _BINARY,
        "image/jpeg": _BINARY,
    },
}


@router.post(
    "/score",
    summary="Score one chest X-ray",
    response_model=ScoreResponse,
    response_model_exclude_none=True,
    openapi_extra={"requestBody": REQUEST_BODY},
    responses={
        400: _error("malformed_request: broken multipart body or headers"),
        401: _error("unauthorized: SQUID_API_KEY is set and the key is missing or wrong"),
        413: _error("too_large: body over SQUID_MAX_UPLOAD_MB"),
        415: _error("unsupported_format: neither DICOM, PNG nor JPEG (by content), or another Content-Type"),
        422: _error(
            "out_of_domain (not a frontal chest radiograph the model may judge: no score, no label; "
            "`reasons` lists the domain gate's codes), missing_file, no_pixel_data, undecodable, "
            "image_too_large, empty_image; with ?output=sr|sc: dicom_output_needs_dicom_input, "
            "source_missing_uids, dicom_output_failed"
        ),
        503: _error("not_ready: the model is still loading"),
        **RESPONSES,
    },
)
async def score(
    request: Request,
    state: StateDep,
    heatmap: bool = Query(False, description="Add the anomaly-map overlay as a base64 PNG."),
    preview: bool = Query(False, description="Add the decoded input (what the model saw) as a base64 PNG."),
    output: Output = Query("json", description=OUTPUT_HELP),
) -> Response:
    """Multipart field ``file`` or a raw ``application/dicom`` / ``image/png`` / ``image/jpeg`` body;
    the format is detected from the content. DICOM UIDs are echoed, patient identifiers never are."""
    runtime, batcher = state.ready_parts()
    try:
        upload = await read_upload(request, state.settings.max_upload_bytes)
    except ApiError as exc:
        metrics.REJECTIONS.labels(exc.reason).inc()
        log.info("rejected", extra={"reason": exc.reason, "status": exc.status})
        raise
    try:
        with batcher.incoming():
            prepared = await state.prepare(upload.data, runtime)
    except ImageRejected as exc:
        _count_rejection(exc)
        raise
    check_input(output, prepared.decoded)
    info = prepared.decoded.info
    metrics.DECODE_SECONDS.labels(info.format).observe(prepared.timing_ms["decode"] / 1e3)
    metrics.PREPROCESS_SECONDS.observe(prepared.timing_ms["preprocess"] / 1e3)
    promised = DECLARED_FORMAT.get(upload.declared_type or "")
    if promised is not None and promised != info.format:
        prepared.decoded.warnings.append(CONTENT_TYPE_MISMATCH)
    try:
        outcome = await batcher.submit(prepared, with_map=heatmap or output == "sc")
    except BatcherClosedError as exc:
        raise ApiError(503, NOT_READY, str(exc), {"Retry-After": "5"}) from None
    prepared.timing_ms["queue"] = outcome.queue_ms
    prepared.timing_ms["inference"] = outcome.inference_ms
    try:
        result = verdict(runtime.gate, prepared, outcome.result)
    except OutOfDomain as exc:
        _count_rejection(exc)
        raise
    metrics.observe_gate(prepared.decoded.warnings)
    version = runtime.metadata.model_version
    metrics.observe_score(version, result.score, result.is_anomalous)
    if heatmap or preview:
        payload = await run_in_threadpool(result_payload, runtime, prepared, result, heatmap, preview)
    else:
        payload = result_payload(runtime, prepared, result, False)
    log.info(
        "scored",
        extra={
            "format": info.format,
            "rows": info.rows,
            "columns": info.columns,
            "score": round(result.score, 6),
            "is_anomalous": result.is_anomalous,
            "model_version": version,
            "batch_size": outcome.batch_size,
            "warnings": payload["warnings"],
            "timing_ms": payload["timing_ms"],
        },
    )
    if output != "json":
        return await run_in_threadpool(dicom_response, output, upload.data, prepared.decoded, result, runtime)
    return JSONResponse(payload)


def _count_rejection(exc: ImageRejected) -> None:
    """Metrics and a log line for a refused upload (an out-of-domain one by each of its reasons)."""
    metrics.REJECTIONS.labels(exc.reason).inc()
    extra: dict[str, Any] = {"reason": exc.reason, "status": image_status(exc), "detail": exc.detail}
    if isinstance(exc, OutOfDomain):
        for code in exc.reasons:
            metrics.OUT_OF_DOMAIN.labels(code).inc()
        extra["reasons"] = exc.reasons
    log.info("rejected", extra=extra)
