"""The domain gate: may the model give this input a normal/anomalous verdict at all?

SQUID was trained on frontal chest films of one population (the artifact's ``population``); on a
CT slice, a lateral film, a hand or a photo it still answers with a confident number that means
nothing. The gate runs in front of every verdict, on every channel (``POST /score``, ``squid
score``, batch jobs, the DICOM node), from this one module:

1. **Header rules** (:mod:`model.imaging.gates`, DICOM only, before any pixel is decoded): ``modality``,
   ``view``, ``body_part``. A site may switch each off.
2. **Image rules** (:meth:`DomainGate.screen`, after decoding, before the model): ``color_image``,
   ``blank_image``, ``image_too_small``.
3. **The image check** (:meth:`DomainGate.judge`, after the model): the artifact's domain model, a
   distance computed in the ONNX graph from the model's own input (``domain_distance``), against the
   threshold calibrated at export; beyond it, ``not_a_chest_radiograph``.

An input that fails any of them raises :class:`~model.imaging.OutOfDomain` (reasons, never a
score); with ``image_check="advisory"`` the image reasons become warnings and the input is scored.
A film the gate lets through whose patient is outside the training population (an adult, for a
model of children) is scored and carries the warning ``outside_training_population``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import numpy as np

from model.artifact import ArtifactMetadata
from model.imaging import HEADER_RULES, DecodedImage, DomainReason, Finding, OutOfDomain

ImageCheck = Literal["strict", "advisory", "off"]
IMAGE_CHECK_MODES: tuple[ImageCheck, ...] = ("strict", "advisory", "off")
# Shorter sides than this carry too little of a film to say what it shows (the model input is 128).
MIN_SIDE = 32
# Pixels sampled (about, per side) to decide whether an image is blank: a strided view, so the
# check allocates next to nothing even for a film of 100 million pixels.
BLANK_SAMPLE = 96
BLANK_PERCENTILES = (0.5, 99.5)


class DomainWarning(StrEnum):
    """Warnings the gate adds to a scored input (besides advisory image reasons)."""

    OUTSIDE_TRAINING_POPULATION = "outside_training_population"
    IMAGE_CHECK_UNAVAILABLE = "image_check_unavailable"


# Every code the gate may put among a scored input's warnings (advisory image reasons included).
GATE_WARNINGS = frozenset(code.value for code in (*DomainWarning, *DomainReason))


@dataclass(frozen=True)
class GatePolicy:
    """What a site enforces; the defaults are strict. ``header_rules`` is a subset of
    :data:`~model.imaging.HEADER_RULES`; ``age_rule`` adds the population warning."""

    header_rules: frozenset[str] = HEADER_RULES
    age_rule: bool = True
    image_check: ImageCheck = "strict"

    def __post_init__(self) -> None:
        unknown = set(self.header_rules) - HEADER_RULES
        if unknown:
            raise ValueError(f"unknown header rules {sorted(unknown)}; known: {sorted(HEADER_RULES)}")
        if self.image_check not in IMAGE_CHECK_MODES:
            raise ValueError(f"image_check must be one of {IMAGE_CHECK_MODES}, got {self.image_check!r}")


@dataclass(frozen=True)
class Population:
    """Who the model was trained on: patients aged ``min_years`` to ``max_years`` (completed years,
    inclusive: a 5-year-old of 5 years and 11 months is in a population of one to five)."""

    min_years: float
    max_years: float
    description: str = ""

    @classmethod
    def from_metadata(cls, population: dict[str, Any]) -> Population | None:
        ages = population.get("age_years") or {}
        if "min" not in ages or "max" not in ages:
            return None
        return cls(float(ages["min"]), float(ages["max"]), str(population.get("description", "")))

    def contains(self, age_years: float) -> bool:
        return self.min_years <= math.floor(age_years + 1e-9) <= self.max_years

    def describe(self) -> str:
        return f"{self.min_years:g} to {self.max_years:g} years"


@dataclass(frozen=True)
class DomainGate:
    """The gate of one artifact under one policy (see the module docstring)."""

    policy: GatePolicy
    population: Population | None = None
    threshold: float | None = None  # the image check's; None: the artifact has no domain model

    @classmethod
    def for_artifact(cls, metadata: ArtifactMetadata, policy: GatePolicy | None = None) -> DomainGate:
        threshold = metadata.domain.get("threshold")
        return cls(
            policy or GatePolicy(),
            Population.from_metadata(metadata.population),
            float(threshold) if threshold is not None else None,
        )

    @property
    def header_rules(self) -> frozenset[str]:
        return self.policy.header_rules

    def fingerprint(self) -> str:
        """What a cached verdict depends on besides the model: the policy, population and threshold."""
        body = {
            "rules": sorted(self.policy.header_rules),
            "age": self.policy.age_rule,
            "image": self.policy.image_check,
            "population": None
            if self.population is None
            else [self.population.min_years, self.population.max_years],
            "threshold": self.threshold,
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]

    def screen(self, decoded: DecodedImage) -> None:
        """Before the model: the image rules (raises :class:`OutOfDomain` when strict) and the
        population rule; warnings go into ``decoded.warnings``."""
        if self.outside_population(decoded.patient_age_years):  # first: a refusal carries it too
            _warn(decoded, DomainWarning.OUTSIDE_TRAINING_POPULATION)
        if self.policy.image_check != "off":
            self._apply(decoded, image_reasons(decoded))

    def outside_population(self, age_years: float | None) -> bool:
        """Whether the age rule applies and the (known) age lies outside the training population."""
        if not self.policy.age_rule or self.population is None or age_years is None:
            return False
        return not self.population.contains(age_years)

    def judge(self, decoded: DecodedImage, distance: float | None) -> None:
        """After the model: the image check on the graph's ``domain_distance`` of this input."""
        if self.policy.image_check == "off":
            return
        if self.threshold is None or distance is None:
            _warn(decoded, DomainWarning.IMAGE_CHECK_UNAVAILABLE)
            return
        if not distance <= self.threshold:  # a NaN distance is out of domain too
            detail = "the image does not look like the frontal chest radiographs the model was trained on"
            self._apply(decoded, [(DomainReason.NOT_A_CHEST_RADIOGRAPH.value, detail)])

    def _apply(self, decoded: DecodedImage, reasons: list[tuple[str, str]]) -> None:
        if not reasons:
            return
        if self.policy.image_check == "strict":
            raise OutOfDomain(reasons, decoded.warnings)
        for code, _ in reasons:
            _warn(decoded, code)


def image_reasons(decoded: DecodedImage) -> list[tuple[str, str]]:
    """The cheap image rules: colour, blank and tiny images, as (reason, detail)."""
    reasons = []
    if Finding.COLOR_CONVERTED_TO_GRAY.value in decoded.warnings:
        reasons.append((DomainReason.COLOR_IMAGE.value, "a colour image is not a radiograph"))
    short = min(decoded.info.rows, decoded.info.columns)  # as stored: the decode may be reduced
    if short < MIN_SIDE:
        reasons.append(
            (DomainReason.IMAGE_TOO_SMALL.value, f"{short} pixels on the short side (at least {MIN_SIDE})")
        )
    if is_blank(decoded.pixels):
        reasons.append((DomainReason.BLANK_IMAGE.value, "the image is blank (one value almost everywhere)"))
    return reasons


def is_blank(pixels: np.ndarray[Any, Any]) -> bool:
    """Whether (almost) every pixel has one value: the 0.5th and 99.5th percentiles coincide."""
    if pixels.size == 0:
        return True
    step_y = max(1, pixels.shape[0] // BLANK_SAMPLE)
    step_x = max(1, pixels.shape[1] // BLANK_SAMPLE)
    low, high = np.percentile(pixels[::step_y, ::step_x], BLANK_PERCENTILES)
    return not high > low


def _warn(decoded: DecodedImage, code: str) -> None:
    if code not in decoded.warnings:
        decoded.warnings.append(str(code))
