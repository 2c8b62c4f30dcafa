"""Checkpoint -> one self-contained ONNX artifact: E -> in-painting (queue baked in) -> Gs -> D.

The export verifies itself before writing anything: the ONNX checker passes and onnxruntime agrees
with torch on real images; otherwise it aborts and the destination is left untouched.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
import torch
from numpy.typing import NDArray
from torch import nn

from model.artifact import (
    INPUT_NAME,
    METADATA_KEY,
    OPTIONAL_OUTPUTS,
    OUTPUT_NAMES,
    SCHEMA_VERSION,
    ArtifactMetadata,
)
from model.calibration import Calibration
from model.network import SquidGenerator
from model.network.ensemble import Judge
from model.network.evidence import (
    PATH_STEPS,
    SMOOTHING_FRACTION,
    evidence_map,
    gaussian_kernel,
    integrated_gradients,
    oriented_attributions,
)
from model.preprocess import Preprocessing, preprocessing_spec
from training import domain
from training.checkpoint import Checkpoint
from training.domain_export import check_identical, for_checkpoint_data, with_gate
from training.optional_outputs import gate_outputs
from training.populations import known_population

RAW_TOLERANCE = 1e-4
RECONSTRUCTION_TOLERANCE = 1e-5
# The map's pixels must add up to orientation * (raw - reference raw) this closely (float32 sums).
MAP_SUM_TOLERANCE = 1e-3
# Full colour on the overlay: the share of training normals' map pixels that stay below it.
DISPLAY_QUANTILE = 0.99
REFERENCE_BATCH = 32


class ExportError(RuntimeError):
    """The export failed a self-check; nothing was written."""


@dataclass(frozen=True)
class ReferenceMap:
    """What the map is measured against: the training normals' mean image (the attribution baseline)
    and mean raw score, and the overlay's fixed colour scale from their own maps."""

    baseline: torch.Tensor  # (1, 1, H, W)
    mean_map: torch.Tensor  # (1, 1, H, W): the normals' mean oriented, smoothed attributions
    raw_mean: float
    display_max: float
    images: int

    def describe(self) -> dict[str, Any]:
        """The ``anomaly_map`` entry of the artifact's metadata: what the map is and its scale."""
        return {
            "method": "integrated_gradients",
            "units": "raw logit per pixel",
            "sum": "orientation * (raw_score - reference_raw_mean)",
            "baseline": "mean image of the training normals",
            "reference_map": "mean map of the training normals, subtracted",
            "path_steps": PATH_STEPS,
            "smoothing_sigma_px": round(self.baseline.shape[-1] * SMOOTHING_FRACTION, 3),
            "reference": "mean raw score of the training normals",
            "reference_images": self.images,
            "reference_raw_mean": self.raw_mean,
            "display_max": self.display_max,
            "display_quantile": DISPLAY_QUANTILE,
        }


class InferenceChain(nn.Module):
    """What the artifact computes for a batch of preprocessed images (N, 1, H, W) in [0, 1].

    Outputs the raw score (the discriminators' mean logit on the reconstruction, or on the input when
    the config's ``score_on`` says so), the calibrated score, the student reconstruction and the
    anomaly map: integrated gradients of the raw score from the training normals' mean image,
    smoothed, oriented so that positive = evidence for anomalous, minus the normals' mean map
    (:mod:`model.network.evidence`).
    Its pixels sum to ``orientation * (raw - reference raw mean)``.
    """

    baseline: torch.Tensor
    kernel: torch.Tensor
    mean_map: torch.Tensor

    def __init__(
        self,
        generator: SquidGenerator,
        judge: Judge,
        calibration: Calibration,
        reference: ReferenceMap,
    ) -> None:
        super().__init__()
        self.generator = generator.eval()
        self.judge = judge.eval()
        self.mu, self.sigma = float(calibration.mu), float(calibration.sigma)
        self.orientation = float(calibration.orientation)
        self.reference_raw = float(reference.raw_mean)
        self.size = generator.config.image_size
        self.register_buffer(
            "baseline", reference.baseline.detach().float().reshape(1, 1, self.size, self.size)
        )
        self.register_buffer("kernel", gaussian_kernel(self.size))
        self.register_buffer(
            "mean_map", reference.mean_map.detach().float().reshape(1, 1, self.size, self.size)
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        reconstruction = self.generator.reconstruct(images)
        judged = images if self.generator.config.score_on == "input" else reconstruction
        raw, attributions = integrated_gradients(self.judge, judged, self.baseline)
        score = torch.sigmoid(self.orientation * (raw - self.mu) / self.sigma)
        anomaly_map = evidence_map(
            attributions, raw, self.reference_raw, self.orientation, self.kernel, self.mean_map
        )
        return raw, score, reconstruction, anomaly_map


def reference_map(
    generator: SquidGenerator,
    judge: Judge,
    normals: NDArray[np.float32],
    orientation: int,
) -> ReferenceMap:
    """The normals' mean image (the attribution baseline), mean raw score and mean map, and the
    colour scale: the ``DISPLAY_QUANTILE`` of the normals' own map pixels."""
    if len(normals) == 0:
        raise ExportError("the reference map needs training normals; none were given")
    generator.eval()
    judge_input = generator.config.score_on == "input"
    size = generator.config.image_size
    judged_parts = []
    with torch.inference_mode():
        for start in range(0, len(normals), REFERENCE_BATCH):
            batch = torch.from_numpy(np.ascontiguousarray(normals[start : start + REFERENCE_BATCH]))[:, None]
            judged_parts.append(batch if judge_input else generator.reconstruct(batch))
        judged = torch.cat(judged_parts)
        baseline = judged.double().mean(0, keepdim=True).float()
        kernel = gaussian_kernel(size)
        raws, attributions = zip(
            *(integrated_gradients(judge, part, baseline) for part in judged.split(REFERENCE_BATCH)),
            strict=True,
        )
        raw = torch.cat(raws)
        raw_mean = float(raw.double().mean())
        attribution = torch.cat(attributions)
        mean_map = (
            oriented_attributions(attribution, orientation, kernel).double().mean(0, keepdim=True).float()
        )
        maps = evidence_map(attribution, raw, raw_mean, orientation, kernel, mean_map)
        display_max = float(
            torch.quantile(maps.flatten()[:: max(1, maps.numel() // 4_000_000)].float(), DISPLAY_QUANTILE)
        )
    return ReferenceMap(baseline, mean_map, raw_mean, max(display_max, 1e-12), len(normals))


def build_chain(checkpoint: Checkpoint, reference: ReferenceMap | None = None) -> InferenceChain:
    """The chain to export. Without a ``reference`` the baseline is a mid-grey image and the
    reference raw 0 (only for benchmarks that time the graph; :func:`export` always passes one)."""
    generator, judge = checkpoint.build()
    size = checkpoint.squid_config().image_size
    if reference is None:
        flat = torch.full((1, 1, size, size), 0.5)
        reference = ReferenceMap(flat, torch.zeros_like(flat), 0.0, 1.0, 0)
    return InferenceChain(generator, judge, checkpoint.get_calibration(), reference).eval()


@dataclass
class ExportReport:
    path: Path
    size_bytes: int
    max_raw_difference: float
    max_reconstruction_difference: float
    metadata: ArtifactMetadata


def weights_digest(chain: InferenceChain) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(chain.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def build_metadata(
    checkpoint: Checkpoint, chain: InferenceChain, version: str, reference: ReferenceMap
) -> ArtifactMetadata:
    assert checkpoint.threshold is not None and checkpoint.calibration is not None
    size = checkpoint.squid_config().image_size
    return ArtifactMetadata(
        schema_version=SCHEMA_VERSION,
        model_name=f"squid-{checkpoint.config['name']}",
        model_version=version,
        preset=checkpoint.config["name"],
        input_size=size,
        preprocessing=preprocessing_spec(size, checkpoint.squid_config().intensity),
        calibration=checkpoint.calibration,
        threshold=float(checkpoint.threshold["value"]),
        threshold_rule=checkpoint.threshold["rule"],
        threshold_detail=checkpoint.threshold.get("detail", {}),
        operating_points={
            name: float(point["value"])
            for name, point in checkpoint.threshold.get("operating_points", {}).items()
            if name != "default"
        },
        score_norm=checkpoint.score_norm,
        validation=checkpoint.validation,
        training={
            "data": checkpoint.data,
            "epoch": checkpoint.epoch,
            "epochs": checkpoint.epochs,
            "seed": checkpoint.seed,
            "ensemble": [
                {"seed": checkpoint.seed, "epoch": checkpoint.epoch, "score_norm": checkpoint.score_norm}
            ]
            + [{k: m[k] for k in ("seed", "epoch", "score_norm")} for m in checkpoint.members],
            "train_seconds": round(checkpoint.train_seconds, 1),
            "trained_at": checkpoint.created,
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "package_version": checkpoint.package_version,
            "git_commit": checkpoint.git_commit,
            "config": checkpoint.config,
        },
        weights_sha256=weights_digest(chain),
        anomaly_map=reference.describe(),
    )


def to_onnx(chain: InferenceChain, size: int) -> onnx.ModelProto:
    """Trace with the dynamo exporter, a batch-2 example and a dynamic batch dimension. Every output
    is computed on every call; :func:`export` then makes the optional ones switchable."""
    example = torch.rand(2, 1, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        # torch's own exporter trips its pytree deprecation; nothing a user of `squid export` can act on.
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated", category=FutureWarning)
        program = torch.onnx.export(
            chain,
            (example,),
            dynamo=True,
            external_data=False,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={"images": {0: batch}},
            optimize=True,
            verbose=False,
        )
    assert program is not None
    return program.model_proto


def feeds(batch: NDArray[np.float32], optional: bool) -> dict[str, NDArray[Any]]:
    """The artifact's inputs: the images and every optional output switched on or off."""
    flags = {flag: np.array(optional) for flag in OPTIONAL_OUTPUTS.values()}
    return {INPUT_NAME: batch, **flags}


def session(model: onnx.ModelProto | str | Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def parity(
    chain: InferenceChain, model: onnx.ModelProto, images: NDArray[np.float32]
) -> tuple[float, float, float]:
    """Largest raw-score and reconstruction differences between torch and onnxruntime, and the
    largest gap between onnxruntime's map total and ``orientation * (raw - reference raw mean)``.

    Also checks that switching the optional outputs off leaves them empty and the scores unchanged.
    """
    batch = np.ascontiguousarray(images[:, None], dtype=np.float32)
    with torch.no_grad():
        expected = [t.numpy() for t in chain(torch.from_numpy(batch))]
    runner = session(model)
    got = runner.run(list(OUTPUT_NAMES), feeds(batch, optional=True))
    plain = dict(zip(OUTPUT_NAMES, runner.run(list(OUTPUT_NAMES), feeds(batch, optional=False)), strict=True))
    if any(plain[name].size for name in OPTIONAL_OUTPUTS):
        raise ExportError("the graph computed an optional output that was switched off; nothing written")
    if not (np.array_equal(plain["raw_score"], got[0]) and np.array_equal(plain["score"], got[1])):
        raise ExportError("scores change when the optional outputs are switched off; nothing written")
    reference = chain.reference_raw
    totals = got[3].astype(np.float64).sum(axis=(1, 2, 3))
    gap = np.abs(totals - chain.orientation * (got[0].astype(np.float64) - reference)).max()
    return float(np.abs(got[0] - expected[0]).max()), float(np.abs(got[2] - expected[2]).max()), float(gap)


def attach_metadata(model: onnx.ModelProto, metadata: ArtifactMetadata) -> None:
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata.to_json()
    model.producer_name = "squid-cxr"
    model.model_version = SCHEMA_VERSION


def write_atomically(model: onnx.ModelProto, out: Path) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    data = model.SerializeToString()
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, out)
    return len(data)


def export(
    checkpoint: Checkpoint,
    out: Path,
    check_images: NDArray[np.float32],
    normals: NDArray[np.float32],
    version: str | None = None,
    domain_model: domain.DomainModel | Literal["auto"] | None = "auto",
    population: dict[str, Any] | None = None,
) -> ExportReport:
    """Export, self-check against torch on ``check_images`` (N, H, W), then write ``out``.

    ``normals`` (N, H, W) are the training normals, preprocessed: their mean contribution map is
    baked into the graph as the map's reference, and their map pixels fix its colour scale.
    ``domain_model`` is the domain gate's image check (:mod:`training.domain`); ``"auto"`` fits it
    on the checkpoint's training folder and calibrates it there and on its selection set, None
    leaves it out. ``population`` defaults to the one known for the training data.
    """
    if len(check_images) < 2:
        raise ExportError("the parity check needs at least two images")
    if checkpoint.threshold is None or checkpoint.calibration is None:
        raise ExportError("checkpoint is not calibrated: export the best checkpoint, not the .last one")
    generator, judge = checkpoint.build()
    reference = reference_map(generator, judge, normals, checkpoint.get_calibration().orientation)
    chain = build_chain(checkpoint, reference)
    size = checkpoint.squid_config().image_size
    metadata = build_metadata(checkpoint, chain, version or _default_version(checkpoint), reference)
    model = gate_outputs(to_onnx(chain, size), OPTIONAL_OUTPUTS)
    if domain_model == "auto":
        prep = Preprocessing(size, checkpoint.squid_config().intensity)
        domain_model = for_checkpoint_data(checkpoint.data, prep)
    plain = model
    if population is None:
        population = known_population(checkpoint.data.get("root", ""))
    if domain_model is not None:
        model, metadata = with_gate(model, metadata, domain_model, population)
    else:
        metadata = replace(metadata, population=population)
    attach_metadata(model, metadata)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"ONNX checker rejected the export: {exc}") from exc
    raw_diff, recon_diff, map_gap = parity(chain, model, check_images)
    if model is not plain:
        check_identical(plain, model, check_images)
    if raw_diff > RAW_TOLERANCE or recon_diff > RECONSTRUCTION_TOLERANCE:
        raise ExportError(
            f"onnxruntime disagrees with torch: raw scores differ by {raw_diff:.2e} (limit {RAW_TOLERANCE}), "
            f"reconstructions by {recon_diff:.2e} (limit {RECONSTRUCTION_TOLERANCE}); nothing written"
        )
    if map_gap > MAP_SUM_TOLERANCE:
        raise ExportError(
            f"the anomaly map does not add up to the score: off by {map_gap:.2e}; nothing written"
        )
    size_bytes = write_atomically(model, Path(out))
    return ExportReport(Path(out), size_bytes, raw_diff, recon_diff, metadata)


def _default_version(checkpoint: Checkpoint) -> str:
    stamp = checkpoint.created[:10].replace("-", "")
    members = f"x{len(checkpoint.members) + 1}" if checkpoint.members else ""
    return f"{checkpoint.package_version}+{checkpoint.config['name']}.e{checkpoint.epoch}{members}.{stamp}"


def describe(report: ExportReport) -> dict[str, Any]:
    return {
        "path": str(report.path),
        "megabytes": round(report.size_bytes / 1e6, 2),
        "max_raw_difference": report.max_raw_difference,
        "max_reconstruction_difference": report.max_reconstruction_difference,
        "map_reference_raw_mean": report.metadata.anomaly_map["reference_raw_mean"],
        "map_display_max": report.metadata.anomaly_map["display_max"],
        "threshold": report.metadata.threshold,
        "threshold_rule": report.metadata.threshold_rule,
        "domain_threshold": report.metadata.domain.get("threshold"),
        "domain_pass_rates": report.metadata.domain.get("pass_rates"),
        "population": report.metadata.population.get("age_years"),
    }
