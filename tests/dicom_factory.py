"""Write synthetic DICOM files with pydicom, for tests that need header cases no real file has.

``make_dicom`` covers what chest X-ray readers must get right: photometric interpretation, bit
depth, signedness, rescale, windows (LINEAR / LINEAR_EXACT / SIGMOID), VOI LUT Sequence,
Presentation LUT Shape, compressed transfer syntaxes, objects without pixels and files without
File Meta. Identifier arguments exist so tests can plant sentinels and check they never leak.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from io import BytesIO
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset, dcmwrite
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    EnhancedSRStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

SOP_CLASS_BY_MODALITY: dict[str, UID] = {
    "DX": DigitalXRayImageStorageForPresentation,
    "CR": ComputedRadiographyImageStorage,
    "CT": CTImageStorage,
    "SR": EnhancedSRStorage,
    "OT": SecondaryCaptureImageStorage,
}
NATIVE_SYNTAXES = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})
Window = tuple[float, float]


def make_dicom(
    pixels: NDArray[Any] | None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 16,
    signed: bool = False,
    modality: str | None = "DX",
    view_position: str | None = "PA",
    body_part: str | None = "CHEST",
    window: Window | Sequence[Window] | None = None,
    voi_lut_function: str | None = None,
    voi_lut_sequence: tuple[int, int, Sequence[int]] | None = None,
    rescale: tuple[float, float] | None = (1.0, 0.0),
    presentation_lut_shape: str | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    encoding_kwargs: Mapping[str, Any] | None = None,
    patient_name: str = "Doe^Jane",
    patient_id: str = "PID-000001",
    birth_date: str = "19700101",
    sop_class: str | None = None,
    no_file_meta: bool = False,
    with_pixels: bool = True,
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """Encode ``pixels`` as a DICOM file and return its bytes.

    ``pixels`` is (rows, cols), (frames, rows, cols), or with a trailing 3 for ``RGB``; values are
    *stored* values (write ``max - v`` yourself for a MONOCHROME1 twin). ``window`` is one
    (center, width) pair or several (multi-valued). ``voi_lut_sequence`` is
    (first_mapped_value, bits_per_entry, lut_values). ``transfer_syntax`` other than the native
    ones is produced with ``Dataset.compress`` (RLE, JPEG 2000, JPEG-LS; pass e.g.
    ``{"j2k_cr": [20]}`` or ``{"jls_error": 2}`` in ``encoding_kwargs`` for lossy variants, and
    ``extra={"LossyImageCompression": "01"}``, which ``compress`` does not set). ``extra`` sets
    any other attribute by keyword, last.
    """
    with warnings.catch_warnings():  # tests write invalid values on purpose
        warnings.simplefilter("ignore")
        ds = Dataset()
        default_class = SOP_CLASS_BY_MODALITY.get(modality or "", DigitalXRayImageStorageForPresentation)
        ds.SOPClassUID = UID(sop_class or default_class)
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.StudyDate = "20240102"
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = birth_date
        ds.PatientSex = "O"
        for keyword, value in (
            ("Modality", modality),
            ("ViewPosition", view_position),
            ("BodyPartExamined", body_part),
        ):
            if value is not None:
                setattr(ds, keyword, value)
        has_pixels = with_pixels and pixels is not None
        if has_pixels:
            _set_pixels(ds, np.asarray(pixels), photometric, bits_stored, signed)
            _set_rescale_and_voi(ds, rescale, window, voi_lut_function, voi_lut_sequence)
            if presentation_lut_shape is not None:
                ds.PresentationLUTShape = presentation_lut_shape
        for keyword, value in (extra or {}).items():
            setattr(ds, keyword, value)
        return _write(ds, UID(transfer_syntax), has_pixels, encoding_kwargs, no_file_meta)


def _set_pixels(ds: Dataset, pixels: NDArray[Any], photometric: str, bits_stored: int, signed: bool) -> None:
    allocated = 8 if bits_stored <= 8 else 16
    dtype = np.dtype(f"{'i' if signed else 'u'}{allocated // 8}")
    ds.set_pixel_data(pixels.astype(dtype), photometric, bits_stored)


def _set_rescale_and_voi(
    ds: Dataset,
    rescale: tuple[float, float] | None,
    window: Window | Sequence[Window] | None,
    voi_lut_function: str | None,
    voi_lut_sequence: tuple[int, int, Sequence[int]] | None,
) -> None:
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.RescaleType = "US"
    if window is not None:
        if isinstance(window[0], int | float):
            pairs = [cast(Window, window)]
        else:
            pairs = list(cast(Sequence[Window], window))
        centers = [float(center) for center, _ in pairs]
        widths = [float(width) for _, width in pairs]
        ds.WindowCenter = centers if len(centers) > 1 else centers[0]
        ds.WindowWidth = widths if len(widths) > 1 else widths[0]
    if voi_lut_function is not None:
        ds.VOILUTFunction = voi_lut_function
    if voi_lut_sequence is not None:
        first_mapped, bits, values = voi_lut_sequence
        item = Dataset()
        descriptor_vr = "SS" if first_mapped < 0 else "US"
        item.add_new(0x00283002, descriptor_vr, [len(values) % 65536, first_mapped, bits])
        item.add_new(0x00283006, "US", [int(v) for v in values])
        ds.VOILUTSequence = [item]


def _write(
    ds: Dataset,
    syntax: UID,
    has_pixels: bool,
    encoding_kwargs: Mapping[str, Any] | None,
    no_file_meta: bool,
) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if has_pixels and syntax not in NATIVE_SYNTAXES:
        ds.compress(syntax, **dict(encoding_kwargs or {}))
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    buffer = BytesIO()
    if no_file_meta:
        del ds.file_meta
        dcmwrite(buffer, ds, implicit_vr=True, little_endian=True)
    else:
        dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()
