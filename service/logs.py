"""Structured logs: one JSON object per line, for the API process and uvicorn alike.

Log events carry technical facts only (request id, route, status, timings, score, reason codes).
Nothing here ever receives DICOM attribute values or upload file names, so patient names, IDs and
birth dates cannot reach the logs; the service test plants sentinels and greps the output.
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.config
import time
from typing import Any

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("squid_request_id", default=None)

# LogRecord attributes that are not user fields (``extra=`` keys are everything else).
_RESERVED = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName", "color_message"}
)
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "event", ...extra fields, "request_id"?, "exc"?}`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        request_id = request_id_var.get()
        if request_id and "request_id" not in entry:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


# Third-party decoders may quote header values in their messages, and a client's broken file is a
# 4xx answer or a result row, not a server error with a traceback: keep them quiet.
QUIET_LOGGERS = {
    "pydicom": "CRITICAL",
    "highdicom": "ERROR",
    "PIL": "WARNING",
    "multipart": "WARNING",
    "python_multipart": "WARNING",
}


def quiet_third_party() -> None:
    """Apply :data:`QUIET_LOGGERS` where :func:`logging_config` is not used (the batch worker)."""
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


def logging_config(level: str = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` mapping (also given to uvicorn as ``log_config``)."""
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "filters": {"withhold_text": {"()": f"{__name__}.WithholdWarningText"}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            # uvicorn's own handlers would print plain text: route its loggers to the root handler.
            **{name: {"handlers": [], "level": level, "propagate": True} for name in _UVICORN_LOGGERS},
            # We write one access line per request ourselves (with route, status and timing).
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": True},
            **{name: {"level": quiet} for name, quiet in QUIET_LOGGERS.items()},
            # Python warnings (see capture_warnings): their text can quote element values.
            "py.warnings": {"filters": ["withhold_text"]},
        },
    }


def capture_warnings() -> None:
    """Send ``warnings.warn`` output through logging (JSON, text withheld) instead of plain stderr."""
    logging.captureWarnings(True)


class WithholdWarningText(logging.Filter):
    """Warnings (pydicom's value validation, for one) can quote element values: keep only the class."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.args[0]) if isinstance(record.args, tuple) and record.args else str(record.msg)
        # "path:line: Category: message" -> "Category"
        category = next((p.strip() for p in text.split(":") if p.strip().endswith("Warning")), "Warning")
        record.msg, record.args = f"a library warning was emitted ({category}; text withheld)", None
        return True


def sanitise_request_id(value: str | None) -> str | None:
    """A caller-chosen ``X-Request-ID`` if it is short and plain, else ``None`` (we make one)."""
    if not value or len(value) > 64 or not all(c.isalnum() or c in "-_.:" for c in value):
        return None
    return value
