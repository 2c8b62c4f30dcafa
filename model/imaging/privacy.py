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
        return without_addresses(text)


_OBJECT_REPR = re.compile(r"<([\w.]+) object at 0x[0-9a-fA-F]+>")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{8,}")


def without_addresses(text: str) -> str:
    """Drop heap addresses from library messages (``<_io.BytesIO object at 0x7f...>``): noise that
    also tells a client about the server's memory layout."""
    return _ADDRESS.sub("0x…", _OBJECT_REPR.sub(r"<\1>", text))


def _vr(ds: Dataset, tag: int) -> str | None:
    element = ds.get_item(tag, keep_deferred=True)  # a large value left unread stays so
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


# Header values a message may quote: DICOM defined terms. Anything else in a free-text element (a
# patient name typed into BodyPartExamined happens) is described, never echoed.
MODALITY_TERMS = frozenset(
    [
        "AR",
        "AS",
        "ASMT",
        "AU",
        "BDUS",
        "BI",
        "BMD",
        "CD",
        "CF",
        "CP",
        "CR",
        "CS",
        "CT",
        "DD",
        "DF",
        "DG",
        "DM",
        "DOC",
        "DR",
        "DS",
        "DX",
        "EC",
        "ECG",
        "EPS",
        "ES",
        "FA",
        "FID",
        "FS",
        "GM",
        "HC",
        "HD",
        "IO",
        "IOL",
        "IVOCT",
        "IVUS",
        "KER",
        "KO",
        "LEN",
        "LP",
        "LS",
        "MA",
        "MG",
        "MR",
        "MS",
        "NM",
        "OAM",
        "OCT",
        "OP",
        "OPM",
        "OPR",
        "OPT",
        "OPTBSV",
        "OPTENF",
        "OPV",
        "OSS",
        "OT",
        "PLAN",
        "POS",
        "PR",
        "PT",
        "PX",
        "REG",
        "RESP",
        "RF",
        "RG",
        "RTDOSE",
        "RTIMAGE",
        "RTPLAN",
        "RTRAD",
        "RTRECORD",
        "RTSEGANN",
        "RTSTRUCT",
        "RWV",
        "SEG",
        "SM",
        "SMR",
        "SR",
        "SRF",
        "STAIN",
        "TEXTUREMAP",
        "TG",
        "US",
        "VA",
        "VF",
        "XA",
        "XC",
    ]
)
BODY_PART_TERMS = frozenset(
    [
        "ABDOMEN",
        "ABDOMENPELVIS",
        "ANKLE",
        "AORTA",
        "ARM",
        "AXILLA",
        "BACK",
        "BLADDER",
        "BRAIN",
        "BREAST",
        "BRONCHUS",
        "BUTTOCK",
        "CALCANEUS",
        "CALF",
        "CAROTID",
        "CEREBELLUM",
        "CERVIX",
        "CHEST",
        "CHESTABDOMEN",
        "CHESTABDPELVIS",
        "CLAVICLE",
        "COCCYX",
        "COLON",
        "CORONARY",
        "CSPINE",
        "CTSPINE",
        "EAR",
        "ELBOW",
        "ESOPHAGUS",
        "EXTREMITY",
        "EYE",
        "FACE",
        "FEMUR",
        "FINGER",
        "FOOT",
        "FOREARM",
        "GALLBLADDER",
        "HAND",
        "HEAD",
        "HEADNECK",
        "HEART",
        "HIP",
        "HUMERUS",
        "IAC",
        "JAW",
        "KIDNEY",
        "KNEE",
        "LARYNX",
        "LEG",
        "LIVER",
        "LSPINE",
        "LSSPINE",
        "LUNG",
        "LUNGS",
        "MAXILLA",
        "MEDIASTINUM",
        "MOUTH",
        "NECK",
        "NECKCHEST",
        "NECKCHESTABDOMEN",
        "NECKCHESTABDPELV",
        "NOSE",
        "ORBIT",
        "OVARY",
        "PANCREAS",
        "PAROTID",
        "PATELLA",
        "PELVIS",
        "PENIS",
        "PHARYNX",
        "PROSTATE",
        "RECTUM",
        "RIB",
        "SACRUM",
        "SCAPULA",
        "SELLA",
        "SHOULDER",
        "SKULL",
        "SPINE",
        "SPLEEN",
        "SSPINE",
        "STERNUM",
        "STOMACH",
        "TESTIS",
        "THIGH",
        "THORAX",
        "THUMB",
        "THYROID",
        "TIBIA",
        "TOE",
        "TONGUE",
        "TORAX",
        "TRACHEA",
        "TSPINE",
        "ULNA",
        "UTERUS",
        "WHOLEBODY",
        "WRIST",
        "ZYGOMA",
        "AP",
        "PA",
        "LAT",
        "LATERAL",
        "LEFT",
        "RIGHT",
    ]
)


def quotable(words: list[str], vocabulary: frozenset[str]) -> str | None:
    """The words joined, when every one is a defined term of ``vocabulary``; else None (describe it).

    The one rule for messages built from header text: a value outside the standard's vocabulary
    could be anything a person typed, so it is not repeated in details, logs or result rows.
    """
    if words and all(word in vocabulary for word in words):
        return " ".join(words)[:64]
    return None
