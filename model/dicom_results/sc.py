"""The image a viewer shows: the X-ray with the anomaly map overlaid and the score burned in.

Many PACS viewers display neither SR nor segmentations, but every one displays a Secondary Capture.
The picture is the very overlay the API returns as ``heatmap_png_base64`` (``model.heatmap``), at a
larger size, with a text band below it; the map comes from the runtime's result through
:func:`anomaly_map` only, so the capture follows whatever map the runtime produces.
"""

from __future__ import annotations

from typing import Any

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from model.heatmap import overlay_rgb
from model.runtime import ScoreResult

from . import codes
from .identity import DISCLAIMER, NOT_FOR_DIAGNOSTIC_USE, ModelInfo

KIND = "sc"
SERIES_NUMBER = 9902
SERIES_DESCRIPTION = "SQUID anomaly map (not for diagnostic use)"
MAX_SIDE = 1024
# Small sources (a 224 px export) are enlarged by pixel replication so the burned-in text stays legible.
MIN_WIDTH = 512
LATERALITIES = ("R", "L")
UNPAIRED_BODY_PARTS = frozenset({"CHEST", "THORAX"})
_PLACEHOLDER_ORIENTATION = ("L", "F")  # replaced by the source's value (or emptied) after construction


def anomaly_map(result: ScoreResult) -> NDArray[np.float32]:
    """The map the capture shows: exactly what the runtime returned for this image."""
    return result.map_or_raise()


def overlay(pixels: NDArray[Any], result: ScoreResult, max_side: int = MAX_SIDE) -> NDArray[np.uint8]:
    """The API's heatmap overlay (the same renderer) at up to ``max_side`` pixels on the long side,
    repeated pixel by pixel an integer number of times when it is narrower than ``MIN_WIDTH``."""
    picture = overlay_rgb(pixels, anomaly_map(result), max_side=max_side, vmax=result.map_scale)
    factor = -(-MIN_WIDTH // picture.shape[1])
    return picture if factor <= 1 else picture.repeat(factor, axis=0).repeat(factor, axis=1)


def caption(result: ScoreResult, model: ModelInfo) -> list[str]:
    decision = "ANOMALOUS" if result.is_anomalous else "normal"
    legend = (
        "colour: more anomalous than normals, fixed scale"
        if result.map_scale is not None
        else "colour: residual, scaled per image"
    )
    return [
        f"SQUID anomaly score {result.score:.3f}: {decision} (threshold {result.threshold:.3f})",
        legend,
        f"model {model.name} {model.version}",
        NOT_FOR_DIAGNOSTIC_USE,
    ]


def burn_in(picture: NDArray[np.uint8], lines: list[str]) -> NDArray[np.uint8]:
    """``picture`` with a black band below it carrying ``lines`` in white (bitmap-free, any width)."""
    width = picture.shape[1]
    size = max(10, width // 42)
    font = ImageFont.load_default(size=size)
    gap = max(2, size // 3)
    band = Image.new("RGB", (width, gap + len(lines) * (size + gap)), (0, 0, 0))
    draw = ImageDraw.Draw(band)
    for index, line in enumerate(lines):
        fitted = _fit(draw, line, font, width - 2 * gap)
        draw.text((gap, gap + index * (size + gap)), fitted, fill=(255, 255, 255), font=font)
    return np.concatenate([picture, np.asarray(band, dtype=np.uint8)], axis=0)


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """``text``, shortened with an ellipsis until it fits ``width`` pixels (long model versions)."""
    while len(text) > 4 and draw.textlength(text, font=font) > width:
        text = text[:-4] + "..."
    return text


def build_sc(source: Dataset, result: ScoreResult, model: ModelInfo, pixels: NDArray[Any]) -> hd.sc.SCImage:
    """The capture of one scored image. ``pixels`` are the display-ready pixels that were scored
    (``DecodedImage.pixels``); ``source`` as for :func:`model.dicom_results.sr.build_sr`."""
    picture = burn_in(overlay(pixels, result), caption(result, model))
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=picture,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=_PLACEHOLDER_ORIENTATION,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        **model.object_attributes(str(source.SOPInstanceUID), KIND, SERIES_NUMBER, SERIES_DESCRIPTION),
    )
    sc.copy_patient_and_study_information(source)
    # The picture keeps the source's row/column directions (it is scaled, never flipped).
    orientation = source.get("PatientOrientation")
    sc.PatientOrientation = list(orientation) if orientation and len(orientation) == 2 else []
    _set_laterality(sc, source)
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = f"{NOT_FOR_DIAGNOSTIC_USE}. {DISCLAIMER}"
    sc.DerivationDescription = (
        f"Anomaly map of {model.name} {model.version} blended over the source image, "
        f"score {result.score:.6f} burned in"
    )[:1024]
    sc.SourceImageSequence = [_source_item(source)]
    return sc


def _set_laterality(sc: Dataset, source: Dataset) -> None:
    """Laterality (Type 2C): the source's side if it has one; absent for a chest, which is unpaired;
    empty ("unknown") when the body part is unknown or paired without a recorded side."""
    body_part = str(source.get("BodyPartExamined", "") or "").strip().upper()
    if body_part:
        sc.BodyPartExamined = body_part
    for keyword in ("Laterality", "ImageLaterality"):
        value = str(source.get(keyword, "") or "").strip().upper()
        if value in LATERALITIES:
            sc.Laterality = value
            return
    if body_part not in UNPAIRED_BODY_PARTS:
        sc.Laterality = None


def _source_item(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    item.PurposeOfReferenceCodeSequence = [codes.SOURCE_IMAGE_PURPOSE]
    return item
