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

A second, one-sided cue catches what the PPCA misses most, lateral films: on a frontal chest film
the middle of the lung band (the mediastinum and spine) is brighter than the brighter of the two
lung fields beside it; on a lateral film the middle is lung. ``ridge`` is that difference.

**Calibration.** The PPCA distance is divided by ``MARGIN`` times its largest ``QUANTILE`` over
each group of calibration films (each class of the training folder and of the selection set); the
ridge's shortfall below its training median is divided by the shortfall of the smallest
``1 - QUANTILE`` quantile over the groups, less ``RIDGE_MARGIN``. The graph outputs the larger of
the two, so the threshold is 1 and at least 99 % of every group pass, with room for a new site.

:func:`attach` splices the nodes into an artifact's graph beside the model (they read the same
input, nothing else), so scores stay bit-identical; :func:`training.domain_export.add_to_artifact`
does that to an artifact already exported and checks it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
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
RIDGE_MARGIN = 0.05  # in units of the model input's intensity (0..1)
# Where the ridge is measured, as fractions of the input: the lung band's rows, and its columns in
# the middle and beside it on either side.
RIDGE_ROWS = (0.2, 0.6)
RIDGE_CENTRE = (0.42, 0.58)
RIDGE_SIDES = ((0.125, 0.344), (0.656, 0.875))
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
    ridge_median: float  # the training films' median ridge
    distance_scale: float | None = None  # calibrated: PPCA distance at which the gate refuses
    ridge_floor: float | None = None  # calibrated: ridge below which the gate refuses
    pass_rates: dict[str, float] = field(default_factory=dict)

    @property
    def threshold(self) -> float | None:
        """The threshold of the graph's output: 1 once calibrated (both parts are scaled to it)."""
        return 1.0 if self.distance_scale is not None else None

    def digest(self) -> str:
        h = hashlib.sha256()
        for array in (self.scale, self.mean, self.basis, self.variances):
            h.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
        for value in (self.residual_variance, self.ridge_median, self.distance_scale, self.ridge_floor):
            h.update(np.float32(value if value is not None else np.nan).tobytes())
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
            "ridge": "mean of the lung band's middle columns minus the brighter side's",
            "combined": "max(distance / distance_scale, "
            "(ridge_median - ridge) / (ridge_median - ridge_floor))",
            "fit_images": self.fit_images,
            "mirrored": True,
            "distance_scale": self.distance_scale,
            "ridge_median": self.ridge_median,
            "ridge_floor": self.ridge_floor,
            "threshold": self.threshold,
            "threshold_rule": f"distance_scale: {MARGIN} x the largest {QUANTILE} quantile over the "
            f"calibration groups; ridge_floor: the smallest {1 - QUANTILE:.3f} quantile less {RIDGE_MARGIN}",
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


def ridge(images: NDArray[np.float32]) -> NDArray[np.float64]:
    """(N, S, S) preprocessed images -> (N,) the mediastinal ridge (what the graph computes)."""
    size = images.shape[-1]
    rows, centre, sides = _ridge_bounds(size)
    band = np.asarray(images, dtype=np.float64)[:, rows[0] : rows[1], :].mean(axis=1)
    side = np.maximum(*(band[:, a:b].mean(axis=1) for a, b in sides))
    return band[:, centre[0] : centre[1]].mean(axis=1) - side


def _ridge_bounds(size: int) -> tuple[tuple[int, int], tuple[int, int], tuple[tuple[int, int], ...]]:
    def span(bounds: tuple[float, float]) -> tuple[int, int]:
        return int(bounds[0] * size), int(bounds[1] * size)

    return span(RIDGE_ROWS), span(RIDGE_CENTRE), tuple(span(side) for side in RIDGE_SIDES)


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
        float(np.median(ridge(images))),
    )


def _constant(name: str, value: NDArray[Any] | list[int]) -> onnx.TensorProto:
    array = np.asarray(value)
    dtype = np.int64 if array.dtype.kind in "iu" else np.float32
    return numpy_helper.from_array(array.astype(dtype), _P + name)


RAW_OUTPUTS = (_P + "distance", _P + "ridge")


def graph_parts(model: DomainModel) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The nodes and initializers that compute ``DOMAIN_OUTPUT`` (N,) from ``INPUT_NAME``; before
    calibration, only the two raw parts (:data:`RAW_OUTPUTS`)."""
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
        helper.make_node("Add", [p + "inside", p + "outside"], [p + "distance"]),
    ]
    rows, centre, sides = _ridge_bounds(s)
    for name, (start, end) in (("rows", rows), ("centre", centre), ("left", sides[0]), ("right", sides[1])):
        inits += [_constant(f"{name}_start", [start]), _constant(f"{name}_end", [end])]
    nodes += [
        helper.make_node("Slice", [INPUT_NAME, p + "rows_start", p + "rows_end", p + "axis_h"], [p + "band"]),
        helper.make_node("ReduceMean", [p + "band", p + "axis_h"], [p + "profile"], keepdims=0),  # (N, 1, S)
    ]
    for name in ("centre", "left", "right"):
        nodes += [
            helper.make_node(
                "Slice",
                [p + "profile", p + f"{name}_start", p + f"{name}_end", p + "axis_h"],
                [p + f"{name}_cols"],
            ),
            helper.make_node(
                "ReduceMean", [p + f"{name}_cols", p + "axis_h"], [p + f"{name}_mean"], keepdims=0
            ),
        ]
    nodes += [
        helper.make_node("Max", [p + "left_mean", p + "right_mean"], [p + "side"]),
        helper.make_node("Sub", [p + "centre_mean", p + "side"], [p + "ridge_n1"]),
        helper.make_node("ReduceMean", [p + "ridge_n1", p + "axis_f"], [p + "ridge"], keepdims=0),  # (N,)
    ]
    if model.distance_scale is None or model.ridge_floor is None:
        return nodes, inits
    inits += [
        _constant("distance_scale", np.array(model.distance_scale)),
        _constant("ridge_median", np.array(model.ridge_median)),
        _constant("ridge_span", np.array(max(model.ridge_median - model.ridge_floor, 1e-6))),
    ]
    nodes += [
        helper.make_node("Div", [p + "distance", p + "distance_scale"], [p + "distance_part"]),
        helper.make_node("Sub", [p + "ridge_median", p + "ridge"], [p + "ridge_short"]),
        helper.make_node("Div", [p + "ridge_short", p + "ridge_span"], [p + "ridge_part"]),
        helper.make_node("Max", [p + "distance_part", p + "ridge_part"], [DOMAIN_OUTPUT]),
    ]
    return nodes, inits


def _output() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(DOMAIN_OUTPUT, TensorProto.FLOAT, ["batch"])


def standalone(model: DomainModel) -> onnx.ModelProto:
    """The domain model alone (input ``images``; output ``domain_distance``, or the raw parts before
    calibration): to calibrate it and to check it."""
    nodes, inits = graph_parts(model)
    images = helper.make_tensor_value_info(
        INPUT_NAME, TensorProto.FLOAT, ["batch", 1, model.size, model.size]
    )
    outputs = (
        [_output()]
        if model.threshold is not None
        else [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch"]) for name in RAW_OUTPUTS]
    )
    graph = helper.make_graph(nodes, "squid-domain", [images], outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    proto.ir_version = 10
    onnx.checker.check_model(proto, full_check=True)
    return proto


def distances(model: DomainModel, images: NDArray[np.float32], batch: int = 256) -> NDArray[np.float32]:
    """The graph's output for (N, S, S) preprocessed images, computed by onnxruntime: (N,) once
    calibrated, else (N, 2): the raw PPCA distance and ridge."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        standalone(model).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    parts = []
    for i in range(0, len(images), batch):
        chunk = np.ascontiguousarray(images[i : i + batch, None], dtype=np.float32)
        values = session.run(None, {INPUT_NAME: chunk})
        parts.append(values[0] if len(values) == 1 else np.stack(values, axis=1))
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def calibrate(model: DomainModel, groups: Mapping[str, NDArray[np.float32]]) -> DomainModel:
    """Set the threshold from the calibration groups (name -> preprocessed films) and record each
    group's pass rate at it."""
    raw_model = replace(model, distance_scale=None, ridge_floor=None, pass_rates={})
    raw = {name: distances(raw_model, images) for name, images in groups.items() if len(images)}
    if not raw:
        raise ValueError("the domain model needs calibration films")
    scale = MARGIN * max(float(np.quantile(parts[:, 0], QUANTILE)) for parts in raw.values())
    floor = min(float(np.quantile(parts[:, 1], 1 - QUANTILE)) for parts in raw.values()) - RIDGE_MARGIN
    calibrated = replace(raw_model, distance_scale=scale, ridge_floor=floor)
    rates = {name: round(float(np.mean(distances(calibrated, groups[name]) <= 1.0)), 4) for name in raw}
    return replace(calibrated, pass_rates=rates)


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
