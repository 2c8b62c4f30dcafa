"""One error shape for every failure: ``{"error": {"reason": <code>, "detail": <text>}}``.

``reason`` is a stable machine-readable code (the image reasons of :mod:`model.imaging` plus the
request-level ones below); ``detail`` is for humans and never quotes patient data.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from model.imaging import ImageRejected, OutOfDomain, Reason

log = logging.getLogger("squid.errors")

# Request-level reasons (image reasons come from model.imaging.Reason).
TOO_LARGE = "too_large"
MISSING_FILE = "missing_file"
MALFORMED_REQUEST = "malformed_request"
UNSUPPORTED_MEDIA_TYPE = "unsupported_format"  # same code as unknown content: the client fix is the same
UNAUTHORIZED = "unauthorized"
CROSS_ORIGIN = "cross_origin"
NOT_READY = "not_ready"
INVALID_REQUEST = "invalid_request"
INTERNAL_ERROR = "internal_error"
# The client went away mid-request: nobody reads the answer, but metrics and logs should not count it
# as a bad request (400) or a server error. 499 is nginx's "client closed request".
CLIENT_CLOSED, CLIENT_CLOSED_STATUS = "client_disconnected", 499


def client_closed() -> ApiError:
    return ApiError(
        CLIENT_CLOSED_STATUS, CLIENT_CLOSED, "the client disconnected before the body was complete"
    )


# 413 stays reserved for the request body limit, so an oversized image is 422.
IMAGE_STATUS: dict[str, int] = {reason.value: 422 for reason in Reason} | {
    Reason.UNSUPPORTED_FORMAT.value: 415
}


def image_status(exc: ImageRejected) -> int:
    """The HTTP status of an image rejection (the contract in :mod:`model.imaging` knows no HTTP)."""
    return IMAGE_STATUS[exc.reason]


# Schema for the OpenAPI documentation of error responses.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "reason": {"type": "string"},
                "detail": {"type": "string"},
                "reasons": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "out_of_domain only: the domain gate's reasons (modality, view, "
                    "body_part, color_image, blank_image, image_too_small, not_a_chest_radiograph)",
                },
                "warnings": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "out_of_domain only",
                },
            },
            "required": ["reason", "detail"],
        }
    },
    "required": ["error"],
}


def documented_errors(*statuses: tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error statuses, each with its description and the error body."""
    return {
        code: {"description": text, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
        for code, text in statuses
    }


class ApiError(Exception):
    """Raise anywhere in a request to answer ``status`` with the standard error body.

    Domain errors (``JobError``, ``ArchiveError``) subclass it, so one handler answers them all.
    """

    def __init__(
        self, status: int, reason: str, detail: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {reason}: {detail}")
        self.status = status
        self.reason = reason
        self.detail = detail
        self.headers = dict(headers or {})


def error_body(reason: str, detail: str) -> dict[str, dict[str, str]]:
    return {"error": {"reason": reason, "detail": detail}}


def error_response(
    status: int, reason: str, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(reason, detail), status_code=status, headers=dict(headers or {}))


def rejection_response(exc: ImageRejected) -> JSONResponse:
    """The error body; an out-of-domain input adds the gate's ``reasons`` and the ``warnings``."""
    if isinstance(exc, OutOfDomain):
        body = error_body(exc.reason, exc.detail)
        body["error"] |= {"reasons": exc.reasons, "warnings": exc.warnings}  # type: ignore[dict-item]
        return JSONResponse(body, status_code=image_status(exc))
    return error_response(image_status(exc), exc.reason, exc.detail)


def _http_reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "http_error"


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception FastAPI/Starlette raise to the standard body (500s are handled in the
    request middleware, which logs them)."""

    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.reason, exc.detail, exc.headers)

    async def image_rejected(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ImageRejected)
        return rejection_response(exc)

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else _http_reason(exc.status_code)
        return error_response(exc.status_code, _http_reason(exc.status_code), detail, exc.headers)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        parts = []
        for item in exc.errors()[:5]:
            where = ".".join(str(p) for p in item.get("loc", ()))
            parts.append(f"{where}: {item.get('msg', 'invalid')}")
        return error_response(422, INVALID_REQUEST, "; ".join(parts) or "invalid request")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(ImageRejected, image_rejected)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
