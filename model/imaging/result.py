"""What a successful read returns: display-ready pixels, non-identifying metadata, soft findings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

ImageFormat = Literal["dicom", "png", "jpeg"]


class Finding(StrEnum):
    """Soft-finding codes put in :attr:`DecodedImage.warnings`; the image is still scored."""

    MISSING_VIEW_POSITION = "missing_view_position"
    UNRECOGNISED_VIEW_POSITION = "unrecognised_view_position"
    MISSING_BODY_PART = "missing_body_part"
    MISSING_MODALITY = "missing_modality"
    SMALL_IMAGE = "small_image"
    UNUSUAL_ASPECT_RATIO = "unusual_aspect_ratio"
    MULTI_FRAME_FIRST_USED = "multi_frame_first_used"
    LOSSY_COMPRESSED = "lossy_compressed"
    NO_VOI_WINDOW_FULL_RANGE = "no_voi_window_full_range"
    INVALID_VOI_WINDOW_FULL_RANGE = "invalid_voi_window_full_range"
    VOI_WINDOW_OUTSIDE_DATA_FULL_RANGE = "voi_window_outside_data_full_range"
    UNKNOWN_VOI_LUT_FUNCTION = "unknown_voi_lut_function"
    PRESENTATION_LUT_CONFLICTS_PHOTOMETRIC = "presentation_lut_conflicts_photometric"
    MISSING_PHOTOMETRIC_INTERPRETATION = "missing_photometric_interpretation"
    MISSING_FILE_META = "missing_file_meta"
    COLOR_CONVERTED_TO_GRAY = "color_converted_to_gray"
    ALPHA_CHANNEL_IGNORED = "alpha_channel_ignored"
    EXIF_ORIENTATION_APPLIED = "exif_orientation_applied"


@dataclass(frozen=True)
class ImageInfo:
    """Technical metadata safe to log and return: no patient identifiers by construction.

    ``rows``/``columns`` are the image's own size (after EXIF orientation for PNG/JPEG), whatever
    resolution it was decoded at (:attr:`DecodedImage.pixels` may be smaller). PNG/JPEG report
    ``MONOCHROME2``/``RGB``/``PALETTE COLOR`` and their sample depth so one schema covers every
    format.
    """

    format: ImageFormat
    rows: int
    columns: int
    photometric_interpretation: str | None = None
    bits_stored: int | None = None
    view_position: str | None = None
    transfer_syntax: str | None = None
    transfer_syntax_name: str | None = None
    modality: str | None = None
    body_part: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return asdict(self)


@dataclass(frozen=True)
class DecodedImage:
    """A 2-D float32 image where brighter means more attenuating (bone white), as on a PNG print.

    The intensity range is arbitrary (callers min-max normalise) but always finite. ``pixels`` is
    at full resolution, or reduced when the reader was given a ``min_side`` (``info`` keeps the
    image's own size).
    """

    pixels: NDArray[np.float32]
    info: ImageInfo
    warnings: list[str] = field(default_factory=list)
    # The patient's age at the study (DICOM only, when the header says), for the domain gate's
    # training-population rule. Deliberately not in ``info``: it is never returned or logged.
    patient_age_years: float | None = field(default=None, repr=False)
