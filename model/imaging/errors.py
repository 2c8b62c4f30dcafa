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
    OUT_OF_DOMAIN = "out_of_domain"
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


class DomainReason(StrEnum):
    """Why an input lies outside the model's domain (several may apply); public codes, like ``Reason``.

    The header rules give ``modality``, ``body_part`` and ``view``; the image check the others.
    """

    MODALITY = "modality"
    BODY_PART = "body_part"
    VIEW = "view"
    COLOR_IMAGE = "color_image"
    BLANK_IMAGE = "blank_image"
    IMAGE_TOO_SMALL = "image_too_small"
    NOT_A_CHEST_RADIOGRAPH = "not_a_chest_radiograph"


class OutOfDomain(ImageRejected):
    """Not a frontal chest radiograph the model may judge: no normal/anomalous verdict is given.

    ``reasons`` are :class:`DomainReason` codes, ``details`` one human sentence each (no patient data).
    ``warnings`` are the soft findings gathered before the refusal (what a scored image would carry).
    """

    def __init__(self, reasons: list[tuple[str, str]], warnings: list[str] | None = None) -> None:
        codes = [DomainReason(code).value for code, _ in reasons]
        super().__init__(Reason.OUT_OF_DOMAIN, "; ".join(detail for _, detail in reasons))
        self.reasons: list[str] = codes
        self.details: list[str] = [detail for _, detail in reasons]
        self.warnings: list[str] = list(warnings or [])
