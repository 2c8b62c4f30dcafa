"""Scoring with an exported artifact on onnxruntime: no torch, CUDA when available, CPU otherwise."""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from model.artifact import (
    DOMAIN_OUTPUT,
    INPUT_NAME,
    METADATA_KEY,
    OPTIONAL_OUTPUTS,
    OUTPUT_NAMES,
    ArtifactError,
    ArtifactMetadata,
)
from model.artifact_source import resolve_artifact
from model.calibration import Calibration
from model.domain import DomainGate, GatePolicy
from model.preprocess import Preprocessing

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def choose_providers(requested: list[str] | None = None) -> list[str]:
    """CUDA first when onnxruntime-gpu sees a GPU, always with CPU as the fallback."""
    available = ort.get_available_providers()
    if requested:
        unknown = [p for p in requested if p not in available]
        if unknown:
            raise ValueError(f"execution providers {unknown} not available here (have {available})")
        return list(requested)
    return [CUDA, CPU] if CUDA in available else [CPU]


@dataclass(frozen=True)
class ScoreResult:
    """One image's result. ``score`` is calibrated to 0..1, higher = more anomalous."""

    score: float
    raw_score: float
    is_anomalous: bool
    threshold: float
    # None when the caller did not ask for it (``SquidRuntime.score(..., with_map=False)``).
    anomaly_map: NDArray[np.float32] | None
    # The map value drawn in full colour, fixed per artifact (None: an old artifact, scale per image).
    map_scale: float | None = None
    # The domain model's distance of this input (None: the artifact has no domain model).
    domain_distance: float | None = None

    def map_or_raise(self) -> NDArray[np.float32]:
        """The anomaly map, for renderers that cannot do without one."""
        if self.anomaly_map is None:
            raise ValueError("this result was scored without its anomaly map (with_map=False)")
        return self.anomaly_map


class SquidRuntime:
    """An opened artifact: validated metadata, an onnxruntime session and the active threshold."""

    def __init__(
        self,
        path: Path | str | None = None,
        *,
        providers: list[str] | None = None,
        intra_op_threads: int | None = None,
        threshold: float | None = None,
        operating_point: str | None = None,
        gate_policy: GatePolicy | None = None,
    ) -> None:
        self.path = resolve_artifact(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"model artifact not found: {self.path}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=choose_providers(providers)
            )
        except Exception as exc:  # onnxruntime raises its own exception types for corrupt files
            raise ArtifactError(f"{self.path} is not a loadable ONNX model: {exc}") from exc
        props = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in props:
            raise ArtifactError(f"{self.path} has no '{METADATA_KEY}' metadata: not a SQUID artifact")
        self.metadata = ArtifactMetadata.from_json(props[METADATA_KEY])
        outputs = [o.name for o in self.session.get_outputs()]
        inputs = [i.name for i in self.session.get_inputs()]
        if outputs not in (list(OUTPUT_NAMES), [*OUTPUT_NAMES, DOMAIN_OUTPUT]) or inputs[0] != INPUT_NAME:
            raise ArtifactError(f"{self.path} has outputs {outputs}, expected {list(OUTPUT_NAMES)}")
        self.output_names = outputs
        self.has_domain_model = DOMAIN_OUTPUT in outputs
        if self.has_domain_model != ("threshold" in self.metadata.domain):
            raise ArtifactError(f"{self.path}: the domain model's output and its metadata do not match")
        unknown = set(inputs[1:]) - set(OPTIONAL_OUTPUTS.values())
        if unknown:
            raise ArtifactError(f"{self.path} has inputs {sorted(unknown)} this runtime does not know")
        # Output -> its switch, for the outputs this artifact computes only on request.
        self.switches = {o: flag for o, flag in OPTIONAL_OUTPUTS.items() if flag in inputs}
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {threshold}")
        if threshold is not None and operating_point is not None:
            raise ValueError("give a threshold or an operating point, not both")
        self.threshold = float(self.metadata.threshold if threshold is None else threshold)
        if operating_point is not None:
            self.threshold = self.operating_point_threshold(operating_point)
        try:
            self.preprocessing  # noqa: B018 - an unknown intensity mode must fail at load, not per image
        except ValueError as exc:
            raise ArtifactError(f"{self.path} has preprocessing this runtime cannot apply: {exc}") from exc
        try:
            self.calibration = Calibration(**self.metadata.calibration)
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"{self.path} has invalid calibration metadata: {exc}") from exc
        self.providers = self.session.get_providers()
        # The domain gate of every input this runtime scores (model.domain), under the site's policy.
        self.gate = DomainGate.for_artifact(self.metadata, gate_policy)
        log.info("loaded %s (%s) on %s", self.path.name, self.metadata.model_version, self.providers)

    @property
    def input_size(self) -> int:
        return self.metadata.input_size

    @property
    def map_scale(self) -> float | None:
        """The artifact's fixed colour scale for its map: the same colour means the same evidence."""
        value = self.metadata.anomaly_map.get("display_max")
        return float(value) if value else None

    @property
    def preprocessing(self) -> Preprocessing:
        """The preprocessing this artifact was trained with, read from its own spec."""
        return Preprocessing.from_spec(self.metadata.preprocessing, self.input_size)

    def run(
        self, batch: NDArray[np.float32], outputs: Collection[str] = OUTPUT_NAMES
    ) -> dict[str, NDArray[np.float32]]:
        """The scores and the requested ``outputs`` for a (N, H, W) or (N, 1, H, W) batch of
        preprocessed images; an optional output not requested is not computed (nor returned)."""
        unknown = set(outputs) - set(OUTPUT_NAMES)
        if unknown:
            raise ValueError(f"unknown outputs {sorted(unknown)}; the artifact has {list(OUTPUT_NAMES)}")
        if batch.ndim == 3:
            batch = batch[:, None]
        size = self.input_size
        if batch.ndim != 4 or batch.shape[1:] != (1, size, size):
            raise ValueError(f"expected a batch of shape (N, 1, {size}, {size}), got {batch.shape}")
        count = len(batch)
        if count == 1:
            # onnxruntime's CPU kernels round a one-image batch differently from larger ones (~1e-8 in
            # the raw logit); padding to two keeps a score independent of the batch it was computed in.
            batch = np.concatenate([batch, np.zeros_like(batch)])
        wanted = {"raw_score", "score", DOMAIN_OUTPUT, *outputs}
        feeds: dict[str, NDArray[np.generic]] = {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}
        feeds |= {flag: np.array(name in wanted) for name, flag in self.switches.items()}
        values = self.session.run(None, feeds)
        return {
            name: value[:count]
            for name, value in zip(self.output_names, values, strict=True)
            if name in wanted
        }

    def score(self, batch: NDArray[np.float32], with_map: bool = True) -> list[ScoreResult]:
        """Scored results; ``with_map=False`` skips the anomaly map (most of the cost of an image)."""
        if len(batch) == 0:
            return []
        out = self.run(batch, ["anomaly_map"] if with_map else [])
        # Calibrate in float64 from the metadata: the graph's float32 output can round mu visibly.
        scores = self.calibration.apply(out["raw_score"])
        distances = out.get(DOMAIN_OUTPUT)
        return [
            ScoreResult(
                score=float(scores[i]),
                raw_score=float(out["raw_score"][i]),
                is_anomalous=bool(scores[i] >= self.threshold),
                threshold=self.threshold,
                anomaly_map=out["anomaly_map"][i, 0] if with_map else None,
                map_scale=self.map_scale,
                domain_distance=float(distances[i]) if distances is not None else None,
            )
            for i in range(len(batch))
        ]

    def operating_point_threshold(self, name: str) -> float:
        """The threshold of a named operating point; ``default`` is always the artifact's own."""
        points = {"default": self.metadata.threshold, **self.metadata.operating_points}
        if name not in points:
            raise ValueError(f"operating point {name!r} is not in this artifact; it has {sorted(points)}")
        return float(points[name])

    def warmup(self) -> None:
        """An inference with and one without the anomaly map, in the two-image shape every call
        runs (one image is padded to two), so that no first request pays for initialising either."""
        blank = np.zeros((1, 1, self.input_size, self.input_size), np.float32)
        self.run(blank, ["anomaly_map"])
        self.run(blank, [])


class RuntimeOptions(Protocol):
    """What :func:`open_runtime` reads: the service's ``Settings`` has these fields."""

    @property
    def model_path(self) -> str | None: ...

    @property
    def providers(self) -> list[str] | None: ...

    @property
    def intra_op_threads(self) -> int | None: ...

    @property
    def threshold(self) -> float | None: ...

    @property
    def operating_point(self) -> str | None: ...

    @property
    def gate_policy(self) -> GatePolicy: ...


def open_runtime(
    options: RuntimeOptions,
    *,
    model: Path | str | None = None,
    threshold: float | None = None,
    operating_point: str | None = None,
) -> SquidRuntime:
    """The one way the API, the workers, in-process jobs and the CLI open the artifact.

    Providers, thread settings and the domain gate's policy come from ``options`` everywhere, so a
    CLI run behaves like the service it stands in for; ``model``, ``threshold`` and
    ``operating_point`` are the CLI's per-run overrides (an explicit threshold also sets aside the
    configured operating point).
    """
    explicit = threshold is not None or operating_point is not None
    return SquidRuntime(
        model or options.model_path,
        providers=options.providers,
        intra_op_threads=options.intra_op_threads,
        threshold=threshold if explicit else options.threshold,
        operating_point=operating_point if explicit else options.operating_point,
        gate_policy=options.gate_policy,
    )
