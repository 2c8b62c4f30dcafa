"""Which acquisitions the model may score: frontal chest radiographs, decided from header strings.

The model was trained on frontal (PA/AP) chest films only; scoring anything else gives a confident
but meaningless number, so these are refused before any pixel is decoded.

Policy, exactly:

* Modality: CR, DX, DR, RG, OT, SC (case-insensitive); an absent or empty Modality is allowed.
* Lateral: values are split into alphanumeric tokens (``"LEFT LATERAL"`` -> ``LEFT``, ``LATERAL``).
  ViewPosition is lateral when a token is one of the DICOM lateral projections ``LL``, ``RL``,
  lateral decubitus ``LLD``, ``RLD``, lateral oblique ``LLO``, ``RLO``, or the words ``LAT``,
  ``LATERAL``. Decubitus films are horizontal-beam AP/PA views of a patient lying on one side:
  not the upright frontal film the model knows, so they share the ``lateral_view`` code.
  A bare ``L`` or ``R`` is *not* taken as lateral (it is a side, not a projection),
  and no substring matching is done (``"PA LEFT"`` is frontal). When ViewPosition is empty, the
  first View Code Sequence item's Code Meaning and the BodyPartExamined are searched for the words
  ``LAT``/``LATERAL`` (sites write ``CHEST_LAT``).
* Chest: BodyPartExamined, when present and non-empty, must contain a token ``CHEST``,
  ``THORAX``, ``LUNG``, ``LUNGS`` or ``TORAX`` (so ``Chest PA``, ``THORAX``, ``CHEST_LAT`` pass,
  ``KNEE``, ``HIP``, ``EXTREMITY``, ``ABDOMEN`` and the single DICOM term ``CHESTABDOMEN`` do not).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .errors import ImageRejected, Reason
from .privacy import BODY_PART_TERMS, MODALITY_TERMS, quotable
from .result import Finding

ALLOWED_MODALITIES = frozenset({"CR", "DX", "DR", "RG", "OT", "SC"})
LATERAL_VIEW_TOKENS = frozenset({"LL", "RL", "LLD", "RLD", "LLO", "RLO", "LAT", "LATERAL"})
LATERAL_WORDS = frozenset({"LAT", "LATERAL"})
FRONTAL_VIEW_TOKENS = frozenset({"AP", "PA", "FRONTAL", "ANTEROPOSTERIOR", "POSTEROANTERIOR"})
CHEST_TOKENS = frozenset({"CHEST", "THORAX", "LUNG", "LUNGS", "TORAX"})

_TOKEN = re.compile(r"[A-Z0-9]+")


def tokens(value: str | None) -> list[str]:
    """Upper-case alphanumeric runs of a header string."""
    return _TOKEN.findall((value or "").upper())


def check_modality(modality: str | None, findings: list[str]) -> None:
    """Refuse CT, MR, SR, ... ; note an absent modality."""
    code = (modality or "").strip().upper()
    if not code:
        findings.append(Finding.MISSING_MODALITY)
    elif code not in ALLOWED_MODALITIES:
        allowed = " ".join(sorted(ALLOWED_MODALITIES))
        term = quotable([code], MODALITY_TERMS)
        shown = f"modality {term!r}" if term else "the modality (not a DICOM defined term)"
        raise ImageRejected(Reason.UNSUPPORTED_MODALITY, f"{shown} is not a radiograph (allowed: {allowed})")


def check_view(
    view_position: str | None,
    *,
    view_code_meaning: str | None,
    body_part: str | None,
    findings: list[str],
) -> None:
    """Refuse lateral projections; note a missing or unrecognised view."""
    view_tokens = tokens(view_position)
    if view_tokens:
        lateral = _first(view_tokens, LATERAL_VIEW_TOKENS)
        if lateral is not None:
            raise ImageRejected(Reason.LATERAL_VIEW, f"ViewPosition {lateral!r} is a lateral view")
        if _first(view_tokens, FRONTAL_VIEW_TOKENS) is None:
            findings.append(Finding.UNRECOGNISED_VIEW_POSITION)
        return
    for source, value in (
        ("View Code Sequence", view_code_meaning),
        ("BodyPartExamined", body_part),
    ):
        if _first(tokens(value), LATERAL_WORDS) is not None:
            raise ImageRejected(Reason.LATERAL_VIEW, f"{source} names a lateral view")
    findings.append(Finding.MISSING_VIEW_POSITION)


def check_body_part(body_part: str | None, findings: list[str]) -> None:
    """Refuse a body part that is stated and is not the chest."""
    part_tokens = tokens(body_part)
    if not part_tokens:
        findings.append(Finding.MISSING_BODY_PART)
    elif _first(part_tokens, CHEST_TOKENS) is None:
        term = quotable(part_tokens, BODY_PART_TERMS)
        shown = f"BodyPartExamined {term!r}" if term else "BodyPartExamined (not a DICOM defined term)"
        raise ImageRejected(Reason.NOT_CHEST, f"{shown} is not the chest")


def _first(values: Iterable[str], wanted: frozenset[str]) -> str | None:
    return next((value for value in values if value in wanted), None)
