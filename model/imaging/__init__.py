"""Read X-rays as they really come: DICOM (any common transfer syntax), PNG and JPEG.

``read_image`` returns display-ready float pixels (LUTs applied, MONOCHROME1 inverted, bone
white), at full resolution or at the reduced one a caller asks for (``min_side``: every scoring
channel decodes at the model's, docs/decoding.md), plus identifier-free metadata and soft findings,
or raises ``ImageRejected`` with a machine-readable reason and the HTTP status the service answers
with.
"""

from .errors import DomainReason, ImageRejected, OutOfDomain, Reason
from .gates import HEADER_RULES
from .reader import DEFAULT_MAX_PIXELS, read_image, read_path
from .result import DecodedImage, Finding, ImageInfo

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "HEADER_RULES",
    "DecodedImage",
    "DomainReason",
    "Finding",
    "ImageInfo",
    "ImageRejected",
    "OutOfDomain",
    "Reason",
    "read_image",
    "read_path",
]
