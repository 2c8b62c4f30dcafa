"""Checks shared by the tests of DICOM result objects: dciodvfy, and reading an SR back with pydicom.

The reader walks the content tree with plain pydicom (no highdicom), so the tests do not read the
objects back with the library that wrote them.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import Dataset

DCIODVFY = shutil.which("dciodvfy")
requires_dciodvfy = pytest.mark.skipif(
    DCIODVFY is None, reason="dciodvfy not installed (Debian dicom3tools; scripts/test.sh installs it)"
)


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's ``Error`` lines for ``path`` (warnings, e.g. our private coding scheme, are allowed)."""
    assert DCIODVFY is not None
    run = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    lines = (run.stdout + run.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


@dataclass
class SrContent:
    """What the tests check in an SR: numbers by concept code, codes, texts and image references."""

    numbers: dict[str, float] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    codes: dict[str, str] = field(default_factory=dict)
    texts: dict[str, list[str]] = field(default_factory=dict)
    images: list[tuple[str, str]] = field(default_factory=list)


def sr_content(ds: Dataset) -> SrContent:
    content = SrContent()
    _walk(ds, content)
    return content


def _walk(item: Dataset, content: SrContent) -> None:
    for child in item.get("ContentSequence", []):
        name = child.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in child else None
        key = str(name.CodeValue) if name is not None else ""
        if child.ValueType == "NUM":
            measured = child.MeasuredValueSequence[0]
            content.numbers[key] = float(measured.get("FloatingPointValue", measured.NumericValue))
            content.units[key] = str(measured.MeasurementUnitsCodeSequence[0].CodeValue)
        elif child.ValueType == "CODE":
            content.codes[key] = str(child.ConceptCodeSequence[0].CodeValue)
        elif child.ValueType == "TEXT":
            content.texts.setdefault(str(name.CodeMeaning) if name is not None else "", []).append(
                str(child.TextValue)
            )
        elif child.ValueType == "IMAGE":
            ref = child.ReferencedSOPSequence[0]
            content.images.append((str(ref.ReferencedSOPClassUID), str(ref.ReferencedSOPInstanceUID)))
        _walk(child, content)
