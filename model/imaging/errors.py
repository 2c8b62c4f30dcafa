"""Why an upload cannot be scored, as a machine-readable code (the service maps each to an HTTP status).

Messages (``detail``) are written for humans but never carry patient data: callers build them from
our own words, transfer syntax names and decoder messages scrubbed of identifier values.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Rejection codes; the strings are part of the service's public contract."""

    UNSUPPORTED_FORMAT = "unsupported_format"
    NO_PIXEL_DATA = "no_pixel_data"
    UNSUPPORTED_MODALITY = "unsupported_modality"
    LATERAL_VIEW = "lateral_view"
    NOT_CHEST = "not_chest"
    UNDECODABLE = "undecodable"
    IMAGE_TOO_LARGE = "image_too_large"
    EMPTY_IMAGE = "empty_image"


class ImageRejected(Exception):  # noqa: N818 - public name, used by the service
    """The input is not a scorable chest X-ray; ``reason`` says why."""

    def __init__(self, reason: Reason | str, detail: str) -> None:
        code = Reason(reason)
        super().__init__(f"{code.value}: {detail}")
        self.reason: str = code.value
        self.detail: str = detail

    def to_dict(self) -> dict[str, str]:
        """The reason and detail (the service adds the HTTP status)."""
        return {"reason": self.reason, "detail": self.detail}
