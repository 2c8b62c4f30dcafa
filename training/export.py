"""Checkpoint -> one self-contained ONNX artifact: E -> in-painting (queue baked in) -> Gs -> D.

The export verifies itself before writing anything: the ONNX checker passes and onnxruntime agrees
with torch on real images; otherwise it aborts and the destination is left untouched.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from model.artifact import INPUT_NAME, METADATA_KEY, OUTPUT_NAMES, SCHEMA_VERSION, ArtifactMetadata
from model.network import Discriminator, SquidGenerator
from model.preprocess import preprocessing_spec
from training.checkpoint import Checkpoint

RAW_TOLERANCE = 1e-4
RECONSTRUCTION_TOLERANCE = 1e-5
MAP_SIGMA_FRACTION = 1 / 40


class ExportError(RuntimeError):
    """The export failed a self-check; nothing was written."""


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    radius = size // 2
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


class InferenceChain(nn.Module):
    """What the artifact computes for a batch of preprocessed images (N, 1, H, W) in [0, 1].

    Outputs the raw D logit (on the reconstruction, or on the input when the config's ``score_on``
    says so), the calibrated score, the student reconstruction and an anomaly map:
    the absolute input/reconstruction residual smoothed by a Gaussian, at input resolution.
    """

    kernel: torch.Tensor

    def __init__(
        self,
        generator: SquidGenerator,
        discriminator: Discriminator,
        mu: float,
        sigma: float,
        orientation: int,
    ) -> None:
        super().__init__()
        self.generator, self.discriminator = generator.eval(), discriminator.eval()
        self.mu, self.sigma, self.orientation = float(mu), float(sigma), float(orientation)
        size = generator.config.image_size
        sigma_px = max(1.0, size * MAP_SIGMA_FRACTION)
        width = int(2 * round(3 * sigma_px) + 1)
        self.register_buffer("kernel", gaussian_kernel(width, sigma_px))
        self.pad = width // 2

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        reconstruction = self.generator.reconstruct(images)
        judged = images if self.generator.config.score_on == "input" else reconstruction
        raw = self.discriminator(judged)
        score = torch.sigmoid(self.orientation * (raw - self.mu) / self.sigma)
        residual = F.pad((images - reconstruction).abs(), [self.pad] * 4, mode="reflect")
        anomaly_map = F.conv2d(residual, self.kernel)
        return raw, score, reconstruction, anomaly_map


@dataclass
class ExportReport:
    path: Path
    size_bytes: int
    max_raw_difference: float
    max_reconstruction_difference: float
    metadata: ArtifactMetadata


def build_chain(checkpoint: Checkpoint) -> InferenceChain:
    generator, discriminator = checkpoint.build()
    calibration = checkpoint.get_calibration()
    chain = InferenceChain(
        generator, discriminator, calibration.mu, calibration.sigma, calibration.orientation
    )
    return chain.eval()


def weights_digest(chain: InferenceChain) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(chain.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def build_metadata(checkpoint: Checkpoint, chain: InferenceChain, version: str) -> ArtifactMetadata:
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
            "train_seconds": round(checkpoint.train_seconds, 1),
            "trained_at": checkpoint.created,
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "package_version": checkpoint.package_version,
            "git_commit": checkpoint.git_commit,
            "config": checkpoint.config,
        },
        weights_sha256=weights_digest(chain),
    )


def to_onnx(chain: InferenceChain, size: int) -> onnx.ModelProto:
    """Trace with the dynamo exporter, a batch-2 example and a dynamic batch dimension."""
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


def session(model: onnx.ModelProto | str | Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def parity(chain: InferenceChain, model: onnx.ModelProto, images: NDArray[np.float32]) -> tuple[float, float]:
    """Largest raw-score and reconstruction differences between torch and onnxruntime."""
    batch = np.ascontiguousarray(images[:, None], dtype=np.float32)
    with torch.no_grad():
        expected = [t.numpy() for t in chain(torch.from_numpy(batch))]
    got = session(model).run(None, {INPUT_NAME: batch})
    return float(np.abs(got[0] - expected[0]).max()), float(np.abs(got[2] - expected[2]).max())


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
    checkpoint: Checkpoint, out: Path, check_images: NDArray[np.float32], version: str | None = None
) -> ExportReport:
    """Export, self-check against torch on ``check_images`` (N, H, W), then write ``out``."""
    if len(check_images) < 2:
        raise ExportError("the parity check needs at least two images")
    if checkpoint.threshold is None or checkpoint.calibration is None:
        raise ExportError("checkpoint is not calibrated: export the best checkpoint, not the .last one")
    chain = build_chain(checkpoint)
    size = checkpoint.squid_config().image_size
    metadata = build_metadata(checkpoint, chain, version or _default_version(checkpoint))
    model = to_onnx(chain, size)
    attach_metadata(model, metadata)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"ONNX checker rejected the export: {exc}") from exc
    raw_diff, recon_diff = parity(chain, model, check_images)
    if raw_diff > RAW_TOLERANCE or recon_diff > RECONSTRUCTION_TOLERANCE:
        raise ExportError(
            f"onnxruntime disagrees with torch: raw scores differ by {raw_diff:.2e} (limit {RAW_TOLERANCE}), "
            f"reconstructions by {recon_diff:.2e} (limit {RECONSTRUCTION_TOLERANCE}); nothing written"
        )
    size_bytes = write_atomically(model, Path(out))
    return ExportReport(Path(out), size_bytes, raw_diff, recon_diff, metadata)


def _default_version(checkpoint: Checkpoint) -> str:
    stamp = checkpoint.created[:10].replace("-", "")
    return f"{checkpoint.package_version}+{checkpoint.config['name']}.e{checkpoint.epoch}.{stamp}"


def describe(report: ExportReport) -> dict[str, Any]:
    return {
        "path": str(report.path),
        "megabytes": round(report.size_bytes / 1e6, 2),
        "max_raw_difference": report.max_raw_difference,
        "max_reconstruction_difference": report.max_reconstruction_difference,
        "threshold": report.metadata.threshold,
        "threshold_rule": report.metadata.threshold_rule,
    }
