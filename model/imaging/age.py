"""The patient's age at the study, from Patient's Age or from the birth and study dates.

Used only to compare with the model's training population; the value is never returned, logged or
written (an age, with a birth date, narrows down who a patient is).
"""

from __future__ import annotations

import re
from datetime import date

DAYS_PER = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}
_AGE = re.compile(r"^(\d{1,3})\s*([DWMY])$")
# The dates a study carries, in the order that best says when this image was taken.
STUDY_DATE_KEYWORDS = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")


def parse_age_string(value: str | None) -> float | None:
    """A DICOM AS value (``045Y``, ``018M``, ``003W``, ``010D``) in years; None when invalid."""
    match = _AGE.match((value or "").strip().upper())
    if match is None:
        return None
    return int(match.group(1)) * DAYS_PER[match.group(2)] / DAYS_PER["Y"]


def parse_date(value: str | None) -> date | None:
    """A DICOM DA value (``YYYYMMDD``); None when absent or invalid."""
    text = (value or "").strip()
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def age_years(patient_age: str | None, birth_date: str | None, study_date: str | None) -> float | None:
    """Patient's Age when valid, else the years between birth and study date (None: not known)."""
    stated = parse_age_string(patient_age)
    if stated is not None:
        return stated
    born, seen = parse_date(birth_date), parse_date(study_date)
    if born is None or seen is None or seen < born:
        return None
    return (seen - born).days / DAYS_PER["Y"]
