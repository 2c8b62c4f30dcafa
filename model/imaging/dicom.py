"""Read a DICOM upload into display-ready pixels: parse, gate, decode the first frame, apply LUTs.

Order matters: everything decidable from the header (pixel data present, modality, view, body
part, size) and from the codestream's own header (its declared size) is checked before any pixel
is decoded, so refused uploads and bombs cost no decode.

With ``min_side`` the image is decoded at a reduced resolution (:mod:`model.imaging.frames`,
:mod:`model.imaging.reduce`), and the LUTs run on the reduced image only where that equals running
them first: the Modality LUT is a rescale and the VOI is affine over the image's range (no window
clipping, no VOI LUT Sequence, no SIGMOID). Otherwise they run first, on blocks of rows, each block
box-reduced as it comes, so no full-size float image exists either way. A codec reduction (JPEG
2000 resolution level, JPEG DCT scaling) leaves no full-size values to run a LUT on first, so the
codec reduces only when the LUTs are affine over every value Bits Stored allows (decided from the
header) and decodes in full otherwise: a window clipping the background turns large areas into
ties, which the rank-based intensity step of the preprocessing magnifies.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection
from io import BytesIO
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
)

from model.blockwise import map_rows

from . import gates, grayscale
from .age import STUDY_DATE_KEYWORDS, age_years
from .errors import ImageRejected, OutOfDomain, Reason
from .frames import StoredFrame, decode_first_frame, syntax_label
from .privacy import Scrubber
from .reduce import box_factor, box_mean, map_then_reduce
from .result import DecodedImage, Finding, ImageInfo

PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
IMAGE_PIXEL_KEYWORDS = ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel")
UNDEFINED_LENGTH = 0xFFFFFFFF
ALWAYS_LOSSY = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless})
DEFER_BYTES = 1 << 16


def read_dicom(
    data: bytes,
    *,
    max_pixels: int,
    header_rules: Collection[str] = gates.HEADER_RULES,
    min_side: int | None = None,
) -> DecodedImage:
    """DICOM bytes -> :class:`DecodedImage`, or :class:`ImageRejected` with the reason.

    ``header_rules`` are the domain gate's header rules in force (:data:`gates.HEADER_RULES`); any
    that fails raises :class:`OutOfDomain` before a pixel is decoded. ``min_side``: decode at the
    smallest resolution whose shorter side keeps at least that many pixels (``None``: full
    resolution). pydicom warnings are silenced for the whole read: they quote element values and
    carry no information the caller needs (problems surface as rejections or findings instead).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _read(data, max_pixels=max_pixels, header_rules=header_rules, min_side=min_side)


def _read(
    data: bytes, *, max_pixels: int, header_rules: Collection[str], min_side: int | None
) -> DecodedImage:
    findings: list[str] = []
    ds = _parse(data)
    complete = any(keyword in ds for keyword in PIXEL_DATA_KEYWORDS) or _ends_on_element(ds, len(data))
    scrub = Scrubber.from_dataset(ds)
    syntax = _ensure_transfer_syntax(ds, findings)
    _require_pixel_data(ds, syntax, complete=complete)
    refused = gates.header_reasons(header_fields(ds), findings, header_rules)
    if refused:
        raise OutOfDomain(refused, findings)
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows <= 0 or columns <= 0:
        raise ImageRejected(Reason.EMPTY_IMAGE, f"image has {rows} rows and {columns} columns")
    samples = int(ds.get("SamplesPerPixel") or 1)
    if rows * columns * samples > max_pixels:
        raise ImageRejected(
            Reason.IMAGE_TOO_LARGE,
            f"{columns}x{rows}x{samples} samples exceed the limit of {max_pixels}",
        )
    if int(ds.get("NumberOfFrames") or 1) > 1:
        findings.append(Finding.MULTI_FRAME_FIRST_USED)
    if _is_lossy(ds, syntax):
        findings.append(Finding.LOSSY_COMPRESSED)
    codec_side = min_side if min_side and grayscale.affine_for_any_stored_value(ds) else None
    frame = decode_first_frame(data, ds, syntax, min_side=codec_side, scrub=scrub)
    factor = box_factor(frame.pixels.shape[0], frame.pixels.shape[1], min_side)
    pixels = _to_display(frame, factor, ds, syntax, findings)
    age = age_years(_text(ds, "PatientAge"), _text(ds, "PatientBirthDate"), _study_date(ds))
    return DecodedImage(
        pixels=pixels, info=_info(ds, syntax, (rows, columns)), warnings=findings, patient_age_years=age
    )


def _parse(data: bytes) -> Dataset:
    """The dataset, with values over :data:`DEFER_BYTES` (Pixel Data) left in ``data`` until used:
    the decoders read Pixel Data in place (:func:`model.imaging.frames.pixel_data`), not a copy."""
    try:
        ds = dcmread(BytesIO(data), force=True, defer_size=DEFER_BYTES)
    except Exception as exc:
        raise ImageRejected(
            Reason.UNDECODABLE, f"DICOM header could not be parsed ({type(exc).__name__})"
        ) from None
    return ds


def _ends_on_element(ds: Dataset, size: int) -> bool:
    """Whether the last element read ends exactly where the bytes end, i.e. the file was not cut.

    pydicom reads truncated files without raising: a value cut short is kept short and a partial
    tag at the end is dropped. The declared lengths still tell: in a whole file the element that
    ends last ends at the last byte. Must run before any element is accessed (raw elements keep
    their offsets and lengths). Undefined lengths and deflated bodies cannot be checked that way,
    so they count as not whole.
    """
    meta = getattr(ds, "file_meta", None)
    if len(ds) == 0 or (meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian):
        return False
    end = 0
    for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset converts its raw elements
        element = ds.get_item(tag, keep_deferred=True)
        offset, length = getattr(element, "value_tell", None), getattr(element, "length", None)
        if offset is None or length is None or length == UNDEFINED_LENGTH:
            return False
        end = max(end, offset + length)
    return end == size


def _require_pixel_data(ds: Dataset, syntax: UID, *, complete: bool) -> None:
    """Tell objects without pixels (SR, presentation states, header-only images) from truncated ones.

    A cut inside encapsulated pixel data leaves an empty dataset, a cut inside the header leaves
    its first elements; neither is ``complete``. An image SOP class or Image Pixel attributes in a
    file that was cut mean a damaged file; in a whole file they mean an image stored without pixels.
    """
    if any(keyword in ds for keyword in PIXEL_DATA_KEYWORDS):
        return
    declared = (_text(ds, "SOPClassUID"), _text(ds.file_meta, "MediaStorageSOPClassUID"))
    is_image_class = any(uid and "Image Storage" in UID(uid).name for uid in declared)
    if not complete and (len(ds) == 0 or is_image_class or any(k in ds for k in IMAGE_PIXEL_KEYWORDS)):
        raise ImageRejected(
            Reason.UNDECODABLE,
            f"image without complete pixel data (truncated file?), transfer syntax {syntax_label(syntax)}",
        )
    raise ImageRejected(
        Reason.NO_PIXEL_DATA, f"DICOM object without pixel data (SOP class {_sop_class_name(ds)})"
    )


def _ensure_transfer_syntax(ds: Dataset, findings: list[str]) -> UID:
    """Make sure ``file_meta`` names a transfer syntax; bare datasets get the one they were read in.

    pydicom detects implicit/explicit VR and endianness when there is no File Meta; an ACR-NEMA
    style file is implicit VR little endian, which is also what we assume when nothing is known.
    """
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax:
        return UID(str(syntax))
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if implicit is False:
        syntax = ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian
    else:
        syntax = ImplicitVRLittleEndian
    if meta is None:
        meta = FileMetaDataset()
        ds.file_meta = meta
    meta.TransferSyntaxUID = syntax
    findings.append(Finding.MISSING_FILE_META)
    return syntax


def dicom_pixels(data: bytes) -> int:
    """Rows x Columns x Samples per Pixel of the first frame, from the header alone."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(
            BytesIO(data),
            force=True,
            stop_before_pixels=True,
            specific_tags=["Rows", "Columns", "SamplesPerPixel"],
        )
    return (
        int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * int(ds.get("SamplesPerPixel", 1) or 1)
    )


def header_fields(ds: Dataset) -> gates.HeaderFields:
    """What the domain gate's header rules read."""
    try:
        view_code = ds.get("ViewCodeSequence")
        item = view_code[0] if view_code else None
    except Exception:  # a damaged sequence is a missing one
        item = None
    return gates.HeaderFields(
        modality=_text(ds, "Modality"),
        sop_class_uid=_text(ds, "SOPClassUID"),
        view_position=_text(ds, "ViewPosition"),
        view_code_value=_text(item, "CodeValue") if item is not None else None,
        view_code_meaning=_text(item, "CodeMeaning") if item is not None else None,
        body_part=_text(ds, "BodyPartExamined"),
        series_description=_text(ds, "SeriesDescription"),
        protocol_name=_text(ds, "ProtocolName"),
    )


def _study_date(ds: Dataset) -> str | None:
    return next((value for key in STUDY_DATE_KEYWORDS if (value := _text(ds, key))), None)


def _to_display(
    frame: StoredFrame, factor: int, ds: Dataset, syntax: UID, findings: list[str]
) -> NDArray[np.float32]:
    """Stored values -> display values (bone white), box-reduced by ``factor`` on the way."""
    stored = frame.pixels
    photometric = (_text(ds, "PhotometricInterpretation") or "").upper()
    if not photometric:
        findings.append(Finding.MISSING_PHOTOMETRIC_INTERPRETATION)
        photometric = "MONOCHROME2" if stored.ndim == 2 else "RGB"
    if stored.ndim == 3:
        bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
        if grayscale.is_colour(stored, float(2**bits - 1)):
            findings.append(Finding.COLOR_CONVERTED_TO_GRAY)
        gray = _map(stored, grayscale.luma, factor)
    elif photometric == "PALETTE COLOR":
        rgb = apply_color_lut(stored, ds)
        if grayscale.is_colour(rgb, 255.0 if rgb.dtype == np.uint8 else 65535.0):
            findings.append(Finding.COLOR_CONVERTED_TO_GRAY)
        gray = _map(rgb, grayscale.luma, factor)
    elif photometric in ("MONOCHROME1", "MONOCHROME2"):
        gray = _monochrome(stored, factor, ds, photometric, findings)
    else:
        raise ImageRejected(
            Reason.UNDECODABLE,
            f"photometric interpretation {photometric!r} is not supported for a single-sample "
            f"image (transfer syntax {syntax_label(syntax)})",
        )
    if not np.isfinite(gray).all():
        raise ImageRejected(Reason.UNDECODABLE, "pixel values are not finite after the modality/VOI LUTs")
    return np.ascontiguousarray(gray, dtype=np.float32)


def _monochrome(
    stored: NDArray[Any], factor: int, ds: Dataset, photometric: str, findings: list[str]
) -> NDArray[Any]:
    """Modality LUT, VOI and polarity in float64: after the box reduction when they are affine over
    the image's range, otherwise before it by row blocks."""
    low, high = grayscale.modality_range(stored, ds)
    voi = grayscale.voi_function(low, high, ds, findings)
    shape = (_text(ds, "PresentationLUTShape") or "").upper() or None
    if grayscale.shape_conflicts_photometric(photometric, shape):
        findings.append(Finding.PRESENTATION_LUT_CONFLICTS_PHOTOMETRIC)
    invert = grayscale.needs_inversion(photometric, shape)

    def display(rows: NDArray[Any]) -> NDArray[np.float64]:
        values = voi.apply(grayscale.modality_values(rows, ds))
        return 1.0 - values if invert else values

    if factor > 1 and voi.affine and grayscale.modality_is_affine(ds):
        return display(box_mean(stored, factor))
    return _map(stored, display, factor)


def _map(stored: NDArray[Any], formula: Any, factor: int) -> NDArray[Any]:
    """``formula`` on every pixel, by row blocks, box-reduced by ``factor`` (1: full size, float32)."""
    if factor == 1:
        return map_rows(stored, formula, np.float32)
    return map_then_reduce(stored, formula, factor)


def _is_lossy(ds: Dataset, syntax: UID) -> bool:
    return str(ds.get("LossyImageCompression") or "").strip() == "01" or syntax in ALWAYS_LOSSY


def _info(ds: Dataset, syntax: UID, shape: tuple[int, ...]) -> ImageInfo:
    bits = ds.get("BitsStored")
    return ImageInfo(
        format="dicom",
        rows=int(shape[0]),
        columns=int(shape[1]),
        photometric_interpretation=_text(ds, "PhotometricInterpretation"),
        bits_stored=int(bits) if bits not in (None, "") else None,
        view_position=_text(ds, "ViewPosition"),
        transfer_syntax=str(syntax),
        transfer_syntax_name=syntax.name if syntax.name != str(syntax) else None,
        modality=_text(ds, "Modality"),
        body_part=_text(ds, "BodyPartExamined"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        sop_class_uid=_text(ds, "SOPClassUID"),
    )


def _text(ds: Dataset, keyword: str) -> str | None:
    """A single-valued string attribute, stripped; ``None`` when absent or empty."""
    try:
        value = ds.get(keyword)
    except Exception:
        return None
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    if value is None or isinstance(value, bytes):
        return None
    return str(value).strip() or None


def _sop_class_name(ds: Dataset) -> str:
    uid = _text(ds, "SOPClassUID")
    if uid is None:
        return "unknown"
    name = UID(uid).name
    return f"{name} ({uid})" if name != uid else uid
