"""Why an upload cannot be scored, as a machine-readable code the HTTP service maps 1:1 to a status.

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


# 413 stays reserved for the request body limit in the service, so an oversized image is 422.
STATUS: dict[Reason, int] = {
    Reason.UNSUPPORTED_FORMAT: 415,
    Reason.NO_PIXEL_DATA: 422,
    Reason.UNSUPPORTED_MODALITY: 422,
    Reason.LATERAL_VIEW: 422,
    Reason.NOT_CHEST: 422,
    Reason.UNDECODABLE: 422,
    Reason.IMAGE_TOO_LARGE: 422,
    Reason.EMPTY_IMAGE: 422,
}


class ImageRejected(Exception):  # noqa: N818 - public name, used by the service
    """The input is not a scorable chest X-ray; ``reason`` says why, ``status`` how to answer."""

    def __init__(self, reason: Reason | str, detail: str) -> None:
        code = Reason(reason)
        super().__init__(f"{code.value}: {detail}")
        self.reason: str = code.value
        self.detail: str = detail
        self.status: int = STATUS[code]

    def to_dict(self) -> dict[str, str | int]:
        """JSON body for an error response."""
        return {"reason": self.reason, "detail": self.detail, "status": self.status}
