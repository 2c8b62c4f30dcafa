"""Why no result object was made for a scored image, as a code callers can put in a 422 or a CSV row."""

from __future__ import annotations

from enum import StrEnum


class Skip(StrEnum):
    """Reason codes; the strings are part of the service's public contract."""

    # PNG/JPEG have no patient, study or SOP instance to file a result into.
    NOT_DICOM = "dicom_output_needs_dicom_input"
    # The source lacks a UID the result must reference (study, series, SOP class or instance).
    MISSING_UIDS = "source_missing_uids"
    # highdicom refused the source's header (an unknown SOP class, a malformed patient module...).
    BUILD_FAILED = "dicom_output_failed"


class NotBuilt(Exception):  # noqa: N818 - reads as "the result was not built", like ImageRejected
    """No SR/SC for this image; ``reason`` is a :class:`Skip` code, ``detail`` never quotes patient data."""

    def __init__(self, reason: Skip, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason: str = reason.value
        self.detail = detail
