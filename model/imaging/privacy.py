"""Keep patient identifiers out of anything we emit (exception details, logs, JSON).

Results never copy identifying attributes; the only text that could carry them is a third-party
exception message, so those pass through a :class:`Scrubber` built from the dataset.

The scrubber reads identifying elements as *raw bytes*: converting them with pydicom would run
its value validation, whose warnings quote the value and are also written to the ``pydicom``
logger, which is exactly the leak we are preventing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

PATIENT_GROUP = 0x0010
EXTRA_IDENTIFIER_KEYWORDS = frozenset({"AccessionNumber", "InstitutionName", "InstitutionAddress"})
REDACTED = "[redacted]"
# One-character values would shred messages (every "1" redacted) and identify no one. Inside raw
# sequence bytes, short printable runs are mostly VR codes and lengths, so ask for more there.
MIN_LENGTH = 2
MIN_LENGTH_IN_SEQUENCE = 4
_SEPARATORS = re.compile(r"[\x00-\x1f\x7f\\^=]+")


@dataclass(frozen=True)
class Scrubber:
    """Replaces known identifier values in free text, longest first, case-insensitively."""

    values: tuple[str, ...] = ()

    @classmethod
    def from_dataset(cls, ds: Dataset) -> Scrubber:
        """Collect patient-group values, person names (and their components) and a few more."""
        found: set[str] = set()
        for tag in list(ds.keys()):
            vr = _vr(ds, tag)
            if tag.group == PATIENT_GROUP or vr == "PN" or _keyword(tag) in EXTRA_IDENTIFIER_KEYWORDS:
                minimum = MIN_LENGTH_IN_SEQUENCE if vr == "SQ" else MIN_LENGTH
                found |= {v for v in _strings(ds, tag) if len(v) >= minimum}
        return cls(tuple(sorted(found, key=len, reverse=True)))

    def __call__(self, text: str) -> str:
        for value in self.values:
            text = re.sub(re.escape(value), REDACTED, text, flags=re.IGNORECASE)
        return text


def _vr(ds: Dataset, tag: int) -> str | None:
    element = ds.get_item(tag)
    if element is not None and element.VR:
        return str(element.VR)
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


def _keyword(tag: int) -> str:
    return keyword_for_tag(tag) or ""


def _strings(ds: Dataset, tag: int) -> set[str]:
    element = ds.get_item(tag)
    if isinstance(element, RawDataElement):
        raw = element.value
        text = raw.decode("latin-1") if isinstance(raw, bytes) else ""
    else:
        text = "" if element is None else str(element.value)
    whole = text.strip(" \x00")
    parts = {part.strip() for part in _SEPARATORS.split(text)}
    return {value for value in parts | {whole} if value}
