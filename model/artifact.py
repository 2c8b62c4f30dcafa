"""The artifact's embedded metadata: one ``squid`` JSON entry in the ONNX ``metadata_props``.

Everything needed to score travels inside the model file (no side files): calibration, threshold and
the rule that chose it, the preprocessing spec, validation metrics and provenance. Consumers refuse
schema versions they do not understand instead of guessing.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

SCHEMA_VERSION = 1
METADATA_KEY = "squid"
INPUT_NAME = "images"
OUTPUT_NAMES = ("raw_score", "score", "reconstruction", "anomaly_map")
# Outputs computed only when their scalar bool input is true (a batch of 0 otherwise): a plain score
# skips the generator (when D judges the input) and the map. Artifacts without these inputs compute all.
OPTIONAL_OUTPUTS = {"reconstruction": "with_reconstruction", "anomaly_map": "with_anomaly_map"}
# The domain model's output (model.domain): how far an input lies from the training films, per image.
# Artifacts exported before the domain gate lack it (and the ``domain`` metadata).
DOMAIN_OUTPUT = "domain_distance"


class ArtifactError(ValueError):
    """The file is not a SQUID artifact this version can use."""


@dataclass(frozen=True)
class ArtifactMetadata:
    schema_version: int
    model_name: str
    model_version: str
    preset: str
    input_size: int
    preprocessing: dict[str, Any]
    calibration: dict[str, Any]
    threshold: float
    threshold_rule: str
    threshold_detail: dict[str, Any]
    score_norm: str
    validation: dict[str, Any]
    training: dict[str, Any]
    weights_sha256: str
    precision: str = "fp32"
    drift: dict[str, Any] = field(default_factory=dict)
    # Named thresholds chosen with the default one (e.g. ``spec90``: 0.90 specificity on the
    # selection set's normals), selectable at serving time without re-exporting.
    operating_points: dict[str, float] = field(default_factory=dict)
    # What the ``anomaly_map`` output is and its fixed colour scale (``display_max``); empty for
    # artifacts whose map is the older smoothed residual, which renderers then scale per image.
    anomaly_map: dict[str, Any] = field(default_factory=dict)
    # The domain model in the graph (``DOMAIN_OUTPUT``): its method, features and the threshold
    # calibrated at export (``threshold``), with the pass rates it was calibrated on. Empty: none.
    domain: dict[str, Any] = field(default_factory=dict)
    # Who the training films came from: ``{"age_years": {"min": 1, "max": 5}, "description": ...}``;
    # the gate warns ``outside_training_population`` outside it. Empty: not known, no age rule.
    population: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, text: str) -> ArtifactMetadata:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"artifact metadata is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ArtifactError("artifact metadata must be a JSON object")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ArtifactError(
                f"artifact metadata schema {version!r} is not supported (this runtime reads {SCHEMA_VERSION})"
            )
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        missing = required - set(data)
        if missing:
            raise ArtifactError(f"artifact metadata lacks {sorted(missing)}")
        return cls(**{k: v for k, v in data.items() if k in names})
