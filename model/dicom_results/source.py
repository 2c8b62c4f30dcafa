"""The scored image's header, made fit to be the reference of a result object.

Results are filed into the source's study, so its patient and study modules are copied. Real files
often lack Type 2 attributes (patient sex, accession number...) that highdicom reads unconditionally;
those are added *empty* to a private copy (an empty Type 2 value is what the standard asks for when
a value is unknown), never invented; values that break their VR (a Patient's Age of ``62``
instead of ``062Y``) are dropped the same way rather than copied into objects a validator refuses,
and so are values highdicom refuses although they fit their VR: a Patient's Sex other than M, F or O
(``U``, ``MALE``) and a Specific Character Set that is no defined term (``ISO_IR 6``); text that is
not plain ASCII is then written as UTF-8 (``ISO_IR 192``). The UIDs a result must reference cannot
be made up, so their absence is a :class:`NotBuilt` with a reason.
"""

from __future__ import annotations

import warnings
from copy import deepcopy
from io import BytesIO

from highdicom import PatientSexValues
from highdicom.valuerep import _check_specific_character_set  # what highdicom applies to the source
from pydicom import config, dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import validate_value

from .errors import NotBuilt, Skip

REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
PATIENT_SEX = {"", *(value.value for value in PatientSexValues)}
TEXT_VRS = {"SH", "LO", "ST", "LT", "UT", "UC", "PN"}


def read_source(data: bytes) -> Dataset:
    """The header of DICOM bytes (no pixel data), also for files without a File Meta header.

    pydicom's warnings are silenced: they quote element values, patient names included.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return dcmread(BytesIO(data), force=True, stop_before_pixels=True)
        except Exception as exc:
            detail = f"DICOM header could not be parsed ({type(exc).__name__})"
            raise NotBuilt(Skip.BUILD_FAILED, detail) from None


def reference(source: Dataset) -> Dataset:
    """A header-only copy of ``source`` with the Type 2 patient/study attributes present (maybe empty).

    Raises :class:`NotBuilt` when a UID the results must reference is missing or empty.
    """
    missing = [keyword for keyword in REQUIRED_UIDS if not str(source.get(keyword, "") or "").strip()]
    if missing:
        raise NotBuilt(Skip.MISSING_UIDS, f"the source image has no {', '.join(missing)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        copy = Dataset()
        for element in source:
            if element.keyword not in PIXEL_KEYWORDS:
                copy.add(deepcopy(element))
        if hasattr(source, "file_meta"):
            copy.file_meta = deepcopy(source.file_meta)
        for element in list(copy):
            if element.keyword not in REQUIRED_UIDS and not _valid(element):
                del copy[element.tag]
        for keyword in TYPE2_PATIENT_STUDY:
            if keyword not in copy:
                setattr(copy, keyword, None)
        _fit_highdicom_enumerations(copy)
    return copy


def _fit_highdicom_enumerations(copy: Dataset) -> None:
    if str(copy.PatientSex or "") not in PATIENT_SEX:
        copy.PatientSex = None
    charset = copy.get("SpecificCharacterSet")
    if charset is not None and not _defined_charset(charset):
        del copy.SpecificCharacterSet
    if "SpecificCharacterSet" not in copy and not _plain_ascii(copy):
        copy.SpecificCharacterSet = "ISO_IR 192"


def _defined_charset(value: str | list[str]) -> bool:
    try:
        _check_specific_character_set(value)
    except ValueError:
        return False
    return True


def _plain_ascii(dataset: Dataset) -> bool:
    for element in dataset.iterall():
        if element.VR in TEXT_VRS and element.value is not None:
            values = element.value if element.VM > 1 else [element.value]
            if not all(str(value).isascii() for value in values):
                return False
    return True


def _valid(element: DataElement) -> bool:
    """Whether every value of ``element`` fits its VR (sequences are taken as they are)."""
    if element.VR == "SQ" or element.value is None:
        return True
    values = element.value if element.VM > 1 else [element.value]
    try:
        for value in values:
            validate_value(str(element.VR), value, config.RAISE)
    except Exception:  # the message quotes the value: never let it out
        return False
    return True
