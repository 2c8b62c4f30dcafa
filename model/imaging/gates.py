"""The header rules of the domain gate: is this a frontal chest radiograph, by what its tags say?

The model was trained on frontal (PA/AP) chest films only; scoring anything else gives a confident
but meaningless number. These rules run on the header before any pixel is decoded and each names a
:class:`~model.imaging.errors.DomainReason`; a site may switch each off (``rules``). Tags are often
missing and sometimes wrong, so a missing tag is only a finding: the image check
(:mod:`model.domain`) decides then.

Policy, exactly:

* ``modality``: Modality must be CR, DX, DR, RG, OT or SC (case-insensitive); an absent or empty
  Modality is allowed. A SOP class of a cross-sectional or non-radiograph modality (CT, MR, US,
  NM, PET, ...) fails too, whatever the Modality says.
* ``view``: values are split into alphanumeric tokens (``"LEFT LATERAL"`` -> ``LEFT``, ``LATERAL``).
  ViewPosition is lateral when a token is one of the DICOM lateral projections ``LL``, ``RL``,
  lateral decubitus ``LLD``, ``RLD``, lateral oblique ``LLO``, ``RLO``, or the words ``LAT``,
  ``LATERAL``. Decubitus films are horizontal-beam AP/PA views of a patient lying on one side:
  not the upright frontal film the model knows, so they fail the same rule. A bare ``L`` or ``R``
  is *not* taken as lateral (it is a side, not a projection), and no substring matching is done
  (``"PA LEFT"`` is frontal, ``"BILATERAL"`` is not lateral). When ViewPosition is empty, the
  first View Code Sequence item decides by its code (SNOMED CT lateral and oblique projections
  fail, antero-posterior / postero-anterior / frontal pass) or by its Code Meaning's words; then
  SeriesDescription, ProtocolName and BodyPartExamined are searched for ``LAT``/``LATERAL``
  (sites write ``CHEST LAT``, ``Thorax lateral``, ``CHEST_LAT``). A text that also names a frontal
  projection (``"CHEST PA + LAT"`` describes a study, not this image) decides nothing.
* ``body_part``: BodyPartExamined, when present and non-empty, must contain a token ``CHEST``,
  ``THORAX``, ``LUNG``, ``LUNGS`` or ``TORAX`` (so ``Chest PA``, ``THORAX``, ``CHEST_LAT`` pass,
  ``KNEE``, ``HIP``, ``EXTREMITY``, ``ABDOMEN`` and the single DICOM term ``CHESTABDOMEN`` do not).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from pydicom.uid import UID

from .errors import DomainReason
from .privacy import BODY_PART_TERMS, MODALITY_TERMS, quotable
from .result import Finding

HEADER_RULES = frozenset({DomainReason.MODALITY.value, DomainReason.BODY_PART.value, DomainReason.VIEW.value})
ALLOWED_MODALITIES = frozenset({"CR", "DX", "DR", "RG", "OT", "SC"})
# Words in a SOP class name that mean an acquisition the model cannot judge, whatever Modality says.
FOREIGN_SOP_WORDS = frozenset(
    {
        "CT",
        "MR",
        "ULTRASOUND",
        "POSITRON",
        "NUCLEAR",
        "TOMOGRAPHY",
        "TOMOSYNTHESIS",
        "MAMMOGRAPHY",
        "OPHTHALMIC",
        "ENDOSCOPIC",
        "MICROSCOPIC",
    }
)
LATERAL_VIEW_TOKENS = frozenset({"LL", "RL", "LLD", "RLD", "LLO", "RLO", "LAT", "LATERAL"})
LATERAL_WORDS = frozenset({"LAT", "LATERAL"})
FRONTAL_VIEW_TOKENS = frozenset({"AP", "PA", "FRONTAL", "ANTEROPOSTERIOR", "POSTEROANTERIOR"})
CHEST_TOKENS = frozenset({"CHEST", "THORAX", "LUNG", "LUNGS", "TORAX"})
# DICOM CID 4010 (DX View), SNOMED CT and the older SRT codes of the same concepts.
FRONTAL_VIEW_CODES = frozenset({"399348003", "272479007", "399033003", "R-10206", "R-10214"})
NON_FRONTAL_VIEW_CODES = frozenset(
    {
        "399067008",  # lateral
        "399173006",  # left lateral
        "399198007",  # right lateral
        "260427002",  # lateral oblique
        "399182000",  # oblique
        "399135007",  # left anterior oblique
        "399356000",  # right anterior oblique
        "399006002",  # left posterior oblique
        "399038007",  # right posterior oblique
        "R-10232",  # right lateral (SRT)
        "R-10236",  # left lateral (SRT)
    }
)

_TOKEN = re.compile(r"[A-Z0-9]+")


@dataclass(frozen=True)
class HeaderFields:
    """The header strings the rules read (stripped, ``None`` when absent); never returned to anyone."""

    modality: str | None = None
    sop_class_uid: str | None = None
    view_position: str | None = None
    view_code_value: str | None = None
    view_code_meaning: str | None = None
    body_part: str | None = None
    series_description: str | None = None
    protocol_name: str | None = None


def tokens(value: str | None) -> list[str]:
    """Upper-case alphanumeric runs of a header string."""
    return _TOKEN.findall((value or "").upper())


def header_reasons(
    fields: HeaderFields, findings: list[str], rules: Collection[str] = HEADER_RULES
) -> list[tuple[str, str]]:
    """Every enabled rule that fails, as (reason code, detail); soft findings go to ``findings``."""
    checks = (
        (DomainReason.MODALITY, _modality),
        (DomainReason.VIEW, _view),
        (DomainReason.BODY_PART, _body_part),
    )
    reasons = []
    for code, check in checks:
        detail = check(fields, findings)
        if detail is not None and code.value in rules:
            reasons.append((code.value, detail))
    return reasons


def _modality(fields: HeaderFields, findings: list[str]) -> str | None:
    code = (fields.modality or "").strip().upper()
    if not code:
        findings.append(Finding.MISSING_MODALITY)
    elif code not in ALLOWED_MODALITIES:
        allowed = " ".join(sorted(ALLOWED_MODALITIES))
        term = quotable([code], MODALITY_TERMS)
        shown = f"modality {term!r}" if term else "the modality (not a DICOM defined term)"
        return f"{shown} is not a radiograph (allowed: {allowed})"
    sop = UID(fields.sop_class_uid) if fields.sop_class_uid else None
    if sop is not None and sop.name != str(sop) and FOREIGN_SOP_WORDS.intersection(tokens(sop.name)):
        return f"SOP class {sop.name!r} is not a radiograph"
    return None


def _view(fields: HeaderFields, findings: list[str]) -> str | None:
    view_tokens = tokens(fields.view_position)
    if view_tokens:
        lateral = _first(view_tokens, LATERAL_VIEW_TOKENS)
        if lateral is not None:
            return f"ViewPosition {lateral!r} is a lateral view"
        if _first(view_tokens, FRONTAL_VIEW_TOKENS) is None:
            findings.append(Finding.UNRECOGNISED_VIEW_POSITION)
        return None
    code = (fields.view_code_value or "").strip()
    if code in NON_FRONTAL_VIEW_CODES:
        return "the View Code Sequence names a lateral or oblique projection"
    if code in FRONTAL_VIEW_CODES:
        return None
    for source, value in (
        ("View Code Sequence", fields.view_code_meaning),
        ("SeriesDescription", fields.series_description),
        ("ProtocolName", fields.protocol_name),
        ("BodyPartExamined", fields.body_part),
    ):
        words = tokens(value)
        if _first(words, LATERAL_WORDS) is not None and _first(words, FRONTAL_VIEW_TOKENS) is None:
            return f"{source} names a lateral view"
    findings.append(Finding.MISSING_VIEW_POSITION)
    return None


def _body_part(fields: HeaderFields, findings: list[str]) -> str | None:
    part_tokens = tokens(fields.body_part)
    if not part_tokens:
        findings.append(Finding.MISSING_BODY_PART)
    elif _first(part_tokens, CHEST_TOKENS) is None:
        term = quotable(part_tokens, BODY_PART_TERMS)
        shown = f"BodyPartExamined {term!r}" if term else "BodyPartExamined (not a DICOM defined term)"
        return f"{shown} is not the chest"
    return None


def _first(values: Iterable[str], wanted: frozenset[str]) -> str | None:
    return next((value for value in values if value in wanted), None)
