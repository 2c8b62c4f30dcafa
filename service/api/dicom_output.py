"""``POST /score?output=sr|sc``: the scored image's result object itself, as ``application/dicom``.

The route calls :func:`check_input` before inference (PNG/JPEG have no study to file into: a 422
with a reason, not a wasted inference) and :func:`dicom_response` after it. The object is built by
:mod:`model.dicom_results`, the same builder the CLI and the batch jobs use.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi.responses import Response

from model.dicom_results import MEDIA_TYPE, ModelInfo, NotBuilt, build_for_upload, require_dicom
from model.imaging import DecodedImage
from model.runtime import ScoreResult, SquidRuntime
from service.errors import ApiError

Output = Literal["json", "sr", "sc"]
OUTPUT_HELP = (
    "json: the score as JSON (default); sr: a DICOM Comprehensive 3D SR (TID 1500 measurement report); "
    "sc: a DICOM secondary capture with the anomaly map and the score burned in. sr and sc need a DICOM "
    "upload (they join its study) and answer application/dicom."
)
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The score (JSON), or with ?output=sr|sc the DICOM object",
        "content": {MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
    }
}


def check_input(output: Output, decoded: DecodedImage) -> None:
    """Refuse a PNG/JPEG upload for ``sr``/``sc`` before any inference is spent on it."""
    if output == "json":
        return
    try:
        require_dicom(decoded)
    except NotBuilt as exc:
        raise ApiError(422, exc.reason, exc.detail) from None


def dicom_response(
    output: Output, data: bytes, decoded: DecodedImage, result: ScoreResult, runtime: SquidRuntime
) -> Response:
    """The ``sr`` or ``sc`` object of this scored upload (blocking: run it in the thread pool)."""
    kind: Literal["sr", "sc"] = "sr" if output == "sr" else "sc"
    try:
        (built,) = build_for_upload(data, decoded, result, ModelInfo.from_metadata(runtime.metadata), (kind,))
    except NotBuilt as exc:
        raise ApiError(422, exc.reason, exc.detail) from None
    disposition = f'attachment; filename="{kind}-{built.sop_instance_uid}.dcm"'
    return Response(built.to_bytes(), media_type=MEDIA_TYPE, headers={"Content-Disposition": disposition})
