"""One entry point per use: (source dataset, scoring result, model info) in, result objects out.

Builders never raise anything but :class:`NotBuilt`: a source highdicom refuses (an unknown SOP
class, a malformed module) costs its results, never the score. Warnings are silenced while building
because highdicom and pydicom quote attribute values, patient names included, in their warnings;
exception texts are scrubbed of the source's identifiers for the same reason.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from numpy.typing import NDArray
from pydicom.dataset import Dataset

from model.imaging import DecodedImage
from model.imaging.privacy import Scrubber
from model.runtime import ScoreResult

from .errors import NotBuilt, Skip
from .identity import ModelInfo
from .sc import build_sc
from .source import read_source, reference
from .sr import build_sr
from .writer import to_bytes, write_file

Kind = Literal["sr", "sc"]
KINDS: tuple[Kind, ...] = ("sr", "sc")


@dataclass(frozen=True)
class ResultObject:
    """One built object: ``sr`` (the measurement report) or ``sc`` (the secondary capture)."""

    kind: Kind
    dataset: Dataset

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    @property
    def series_instance_uid(self) -> str:
        return str(self.dataset.SeriesInstanceUID)

    def to_bytes(self) -> bytes:
        return to_bytes(self.dataset)

    def write(self, folder: Path) -> Path:
        return write_file(self.kind, self.dataset, folder)


def build_objects(
    source: Dataset,
    result: ScoreResult,
    model: ModelInfo,
    pixels: NDArray[Any],
    kinds: Sequence[Kind] = KINDS,
) -> list[ResultObject]:
    """The ``kinds`` objects of one scored DICOM image (``pixels``: the display-ready pixels scored)."""
    ref = reference(source)
    built: list[ResultObject] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kind in kinds:
            try:
                if kind == "sr":
                    dataset: Dataset = build_sr(ref, result, model)
                else:
                    dataset = build_sc(ref, result, model, pixels)
            except Exception as exc:
                message = Scrubber.from_dataset(source)(" ".join(str(exc).split()))[:300]
                raise NotBuilt(Skip.BUILD_FAILED, f"{kind}: {type(exc).__name__}: {message}") from None
            built.append(ResultObject(kind, dataset))
    return built


def build_for_upload(
    data: bytes,
    decoded: DecodedImage,
    result: ScoreResult,
    model: ModelInfo,
    kinds: Sequence[Kind] = KINDS,
) -> list[ResultObject]:
    """:func:`build_objects` for the bytes that were scored (what the CLI, API and jobs hold)."""
    require_dicom(decoded)
    return build_objects(read_source(data), result, model, decoded.pixels, kinds)


def write_for_upload(
    data: bytes, decoded: DecodedImage, result: ScoreResult, model: ModelInfo, folder: Path
) -> dict[Kind, Path]:
    """Build both objects of one scored upload and write them into ``folder``: kind -> file."""
    return {obj.kind: obj.write(folder) for obj in build_for_upload(data, decoded, result, model)}


def require_dicom(decoded: DecodedImage) -> None:
    """PNG/JPEG have no study to file into: say so before any work is spent on them."""
    if decoded.info.format != "dicom":
        raise NotBuilt(
            Skip.NOT_DICOM,
            f"SR and secondary capture are made for DICOM inputs only; this upload is {decoded.info.format}",
        )
