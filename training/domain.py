"""The domain model of the gate (:mod:`model.domain`): fitted on the training folder's films, written
into the artifact's ONNX graph, calibrated there.

**What it computes.** From the model's own preprocessed input (N, 1, S, S): an 8x8 thumbnail (the
layout of the film: where bright and dark lie) and a 4x4 grid of mean absolute gradients (how much
fine structure each region has), 80 numbers, standardised. A probabilistic PCA of the training
films (and their mirror images: a film put on the light box the wrong way round is still a chest)
keeps ``COMPONENTS`` directions; the distance is the Mahalanobis distance in that subspace plus the
residual energy over the mean variance of the discarded directions: the negative log-likelihood of
the PPCA model, up to constants. A global descriptor on purpose: a coin, a consolidation or an
opaque lower lung field moves a few of its 80 numbers a little, a CT slice, a hand or a photo moves
all of them a lot (docs/domain-gate.md has the measurements).

**Calibration.** The threshold is ``MARGIN`` times the largest ``QUANTILE`` of the graph's own
distances over each group of calibration films (each class of the training folder and of the
selection set), so at least 99.5 % of every group pass, with room for a new site's films.

:func:`attach` splices the nodes into an artifact's graph beside the model (they read the same
input, nothing else), so scores stay bit-identical; :func:`add_to_artifact` does that to an artifact
already exported and checks it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from model.artifact import DOMAIN_OUTPUT, INPUT_NAME

THUMBNAIL = 8
GRADIENT_GRID = 4
COMPONENTS = 12
QUANTILE = 0.995
MARGIN = 1.5
VERSION = 1
_P = "domain/"  # prefix of every node and initializer this module adds


@dataclass(frozen=True)
class DomainModel:
    """A fitted PPCA on the standardised descriptor, and (once calibrated) its threshold."""

    size: int
    scale: NDArray[np.float64]  # (F,) standard deviations of the descriptor
    mean: NDArray[np.float64]  # (F,) mean of the standardised descriptor
    basis: NDArray[np.float64]  # (F, K) principal directions
    variances: NDArray[np.float64]  # (K,) their variances
    residual_variance: float  # mean variance of the discarded directions
    fit_images: int
    threshold: float | None = None
    pass_rates: dict[str, float] = field(default_factory=dict)

    def digest(self) -> str:
        h = hashlib.sha256()
        for array in (self.scale, self.mean, self.basis, self.variances):
            h.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
        h.update(np.float32(self.residual_variance).tobytes())
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        """The artifact's ``domain`` metadata (``threshold`` is what :mod:`model.domain` reads)."""
        return {
            "version": VERSION,
            "output": DOMAIN_OUTPUT,
            "method": "probabilistic PCA of a global descriptor of the model input",
            "descriptor": {
                "thumbnail": f"{THUMBNAIL}x{THUMBNAIL} mean",
                "gradient": f"{GRADIENT_GRID}x{GRADIENT_GRID} mean of |dx| + |dy|",
            },
            "components": int(self.basis.shape[1]),
            "distance": "sum(z^2 / variance) + residual^2 / residual_variance",
            "fit_images": self.fit_images,
            "mirrored": True,
            "threshold": self.threshold,
            "threshold_rule": f"{MARGIN} x the largest {QUANTILE} quantile over the calibration groups",
            "pass_rates": self.pass_rates,
            "sha256": self.digest(),
        }


def descriptor(images: NDArray[np.float32]) -> NDArray[np.float64]:
    """(N, S, S) preprocessed images -> (N, 80): what the graph computes, in numpy."""
    x = np.asarray(images, dtype=np.float64)
    n, size = x.shape[0], x.shape[-1]
    gx = np.abs(np.diff(x, axis=2, append=x[:, :, -1:]))
    gy = np.abs(np.diff(x, axis=1, append=x[:, -1:, :]))
    return np.concatenate([_pool(x, THUMBNAIL, n, size), _pool(gx + gy, GRADIENT_GRID, n, size)], axis=1)


def _pool(x: NDArray[np.float64], cells: int, n: int, size: int) -> NDArray[np.float64]:
    block = size // cells
    return x.reshape(n, cells, block, cells, block).mean(axis=(2, 4)).reshape(n, -1)


def supported(size: int) -> bool:
    """The descriptor needs an input size the thumbnail and gradient grids divide."""
    return size % THUMBNAIL == 0 and size % GRADIENT_GRID == 0 and size >= 2 * THUMBNAIL


def fit(images: NDArray[np.float32], components: int = COMPONENTS) -> DomainModel:
    """Fit on (N, S, S) preprocessed in-domain films (each also mirrored left-right)."""
    size = images.shape[-1]
    if not supported(size):
        raise ValueError(f"the domain model needs an input size divisible by {THUMBNAIL}, got {size}")
    if len(images) < 2 * components:
        raise ValueError(f"the domain model needs at least {2 * components} films, got {len(images)}")
    features = np.concatenate([descriptor(images), descriptor(images[:, :, ::-1])])
    scale = np.maximum(features.std(axis=0), 1e-6)
    standard = features / scale
    mean = standard.mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov((standard - mean).T))
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    residual = float(max(values[components:].mean(), 1e-9))
    return DomainModel(
        size,
        scale,
        mean,
        vectors[:, :components],
        np.maximum(values[:components], 1e-9),
        residual,
        len(images),
    )


def _constant(name: str, value: NDArray[Any] | list[int]) -> onnx.TensorProto:
    array = np.asarray(value)
    dtype = np.int64 if array.dtype.kind in "iu" else np.float32
    return numpy_helper.from_array(array.astype(dtype), _P + name)


def graph_parts(model: DomainModel) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The nodes and initializers that compute ``DOMAIN_OUTPUT`` (N,) from ``INPUT_NAME``."""
    s = model.size
    thumb, grid = s // THUMBNAIL, s // GRADIENT_GRID
    inits = [
        _constant("one", [1]),
        _constant("zero", [0]),
        _constant("last", [s - 1]),
        _constant("end", [s]),
        _constant("axis_w", [3]),
        _constant("axis_h", [2]),
        _constant("axis_f", [1]),
        _constant("pad_w", [0, 0, 0, 0, 0, 0, 0, 1]),
        _constant("pad_h", [0, 0, 0, 0, 0, 0, 1, 0]),
        _constant("scale", model.scale),
        _constant("mean", model.mean),
        _constant("basis", model.basis),
        _constant("basis_t", model.basis.T.copy()),
        _constant("variances", model.variances),
        _constant("residual_variance", np.array(model.residual_variance)),
    ]
    p = _P
    nodes = [
        helper.make_node(
            "AveragePool", [INPUT_NAME], [p + "thumb"], kernel_shape=[thumb, thumb], strides=[thumb, thumb]
        ),
        helper.make_node("Flatten", [p + "thumb"], [p + "thumb_flat"], axis=1),
    ]
    for axis, pad in (("w", "pad_w"), ("h", "pad_h")):
        nodes += [
            helper.make_node(
                "Slice", [INPUT_NAME, p + "one", p + "end", p + f"axis_{axis}"], [p + f"next_{axis}"]
            ),
            helper.make_node(
                "Slice", [INPUT_NAME, p + "zero", p + "last", p + f"axis_{axis}"], [p + f"this_{axis}"]
            ),
            helper.make_node("Sub", [p + f"next_{axis}", p + f"this_{axis}"], [p + f"diff_{axis}"]),
            helper.make_node("Abs", [p + f"diff_{axis}"], [p + f"abs_{axis}"]),
            helper.make_node("Pad", [p + f"abs_{axis}", p + pad], [p + f"grad_{axis}"], mode="constant"),
        ]
    nodes += [
        helper.make_node("Add", [p + "grad_w", p + "grad_h"], [p + "grad"]),
        helper.make_node(
            "AveragePool", [p + "grad"], [p + "grad_pool"], kernel_shape=[grid, grid], strides=[grid, grid]
        ),
        helper.make_node("Flatten", [p + "grad_pool"], [p + "grad_flat"], axis=1),
        helper.make_node("Concat", [p + "thumb_flat", p + "grad_flat"], [p + "features"], axis=1),
        helper.make_node("Div", [p + "features", p + "scale"], [p + "standard"]),
        helper.make_node("Sub", [p + "standard", p + "mean"], [p + "centred"]),
        helper.make_node("MatMul", [p + "centred", p + "basis"], [p + "z"]),
        helper.make_node("Mul", [p + "z", p + "z"], [p + "z2"]),
        helper.make_node("Div", [p + "z2", p + "variances"], [p + "z2w"]),
        helper.make_node("ReduceSum", [p + "z2w", p + "axis_f"], [p + "inside"], keepdims=0),
        helper.make_node("MatMul", [p + "z", p + "basis_t"], [p + "projected"]),
        helper.make_node("Sub", [p + "centred", p + "projected"], [p + "residual"]),
        helper.make_node("Mul", [p + "residual", p + "residual"], [p + "r2"]),
        helper.make_node("ReduceSum", [p + "r2", p + "axis_f"], [p + "outside_raw"], keepdims=0),
        helper.make_node("Div", [p + "outside_raw", p + "residual_variance"], [p + "outside"]),
        helper.make_node("Add", [p + "inside", p + "outside"], [DOMAIN_OUTPUT]),
    ]
    return nodes, inits


def _output() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(DOMAIN_OUTPUT, TensorProto.FLOAT, ["batch"])


def standalone(model: DomainModel) -> onnx.ModelProto:
    """The domain model alone (input ``images``, output ``domain_distance``): for calibration."""
    nodes, inits = graph_parts(model)
    images = helper.make_tensor_value_info(
        INPUT_NAME, TensorProto.FLOAT, ["batch", 1, model.size, model.size]
    )
    graph = helper.make_graph(nodes, "squid-domain", [images], [_output()], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    proto.ir_version = 10
    onnx.checker.check_model(proto, full_check=True)
    return proto


def distances(model: DomainModel, images: NDArray[np.float32], batch: int = 256) -> NDArray[np.float32]:
    """The graph's distances of (N, S, S) preprocessed images, computed by onnxruntime."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        standalone(model).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    parts = [
        session.run(None, {INPUT_NAME: np.ascontiguousarray(images[i : i + batch, None], dtype=np.float32)})[
            0
        ]
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def calibrate(model: DomainModel, groups: Mapping[str, NDArray[np.float32]]) -> DomainModel:
    """Set the threshold from the calibration groups (name -> preprocessed films) and record each
    group's pass rate at it."""
    scored = {name: distances(model, images) for name, images in groups.items() if len(images)}
    if not scored:
        raise ValueError("the domain model needs calibration films")
    threshold = MARGIN * max(float(np.quantile(d, QUANTILE)) for d in scored.values())
    rates = {name: round(float(np.mean(d <= threshold)), 4) for name, d in scored.items()}
    return DomainModel(
        model.size,
        model.scale,
        model.mean,
        model.basis,
        model.variances,
        model.residual_variance,
        model.fit_images,
        threshold,
        rates,
    )


def attach(artifact: onnx.ModelProto, model: DomainModel) -> onnx.ModelProto:
    """A copy of ``artifact`` with the domain nodes beside the model and ``DOMAIN_OUTPUT`` last."""
    if any(output.name == DOMAIN_OUTPUT for output in artifact.graph.output):
        raise ValueError(f"the artifact already has a {DOMAIN_OUTPUT} output")
    copy = onnx.ModelProto()
    copy.CopyFrom(artifact)
    nodes, inits = graph_parts(model)
    copy.graph.node.extend(nodes)
    copy.graph.initializer.extend(inits)
    copy.graph.output.append(_output())
    return copy


def detach(artifact: onnx.ModelProto) -> onnx.ModelProto:
    """A copy without the domain model (to replace it with a new fit)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(artifact)
    graph = copy.graph
    kept_nodes = [n for n in graph.node if not n.output or not _is_domain(n.output[0])]
    kept_inits = [i for i in graph.initializer if not i.name.startswith(_P)]
    kept_outputs = [o for o in graph.output if o.name != DOMAIN_OUTPUT]
    del graph.node[:], graph.initializer[:], graph.output[:]
    graph.node.extend(kept_nodes)
    graph.initializer.extend(kept_inits)
    graph.output.extend(kept_outputs)
    return copy


def _is_domain(name: str) -> bool:
    return name.startswith(_P) or name == DOMAIN_OUTPUT
