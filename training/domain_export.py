"""Give an artifact its domain gate: at export (automatic) or added to one already exported.

Both paths fit :mod:`training.domain` on the training folder's films (every class: pneumonia is in
the domain) preprocessed as the artifact says, calibrate it on each class of the training folder
and of the selection set, splice it into the graph and record ``domain`` and ``population`` in the
metadata. :func:`add_to_artifact` is for artifacts whose checkpoints are gone (the shipped default):
it checks that every output of the model is bit-identical before and after, or writes nothing.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray

from model.artifact import METADATA_KEY, OUTPUT_NAMES, ArtifactMetadata
from model.preprocess import Preprocessing
from training import data as folders
from training import domain
from training.populations import known_population

LABEL_NAMES = {0: "normal", 1: "anomalous"}


class DomainGateError(RuntimeError):
    """The gate could not be added; nothing was written."""


def labelled_groups(
    roots: dict[str, Path], prep: Preprocessing, progress: bool = False
) -> dict[str, NDArray[np.float32]]:
    """``"<set> normal"`` / ``"<set> anomalous"`` -> the preprocessed films of each labelled folder."""
    groups: dict[str, NDArray[np.float32]] = {}
    for name, root in roots.items():
        records = folders.scan_dataset(Path(root))
        images = folders.load_images(records, prep, progress, f"loading {name} for the domain gate")
        labels = folders.labels_of(records)
        for label, label_name in LABEL_NAMES.items():
            if np.any(labels == label):
                groups[f"{name} {label_name}"] = images[labels == label]
    return groups


def fit_and_calibrate(
    training: Path, selection: Path | None, prep: Preprocessing, progress: bool = False
) -> domain.DomainModel:
    """Fit on every film of ``training``, calibrate on each class of it and of ``selection``."""
    roots = {"training": Path(training)} | ({"selection": Path(selection)} if selection else {})
    groups = labelled_groups(roots, prep, progress)
    films = np.concatenate([images for name, images in groups.items() if name.startswith("training ")])
    return domain.calibrate(domain.fit(films), groups)


def for_checkpoint_data(
    data: dict[str, Any], prep: Preprocessing, progress: bool = False
) -> domain.DomainModel | None:
    """The domain model of a checkpoint's recorded data (None: not an image folder, or an input size
    the descriptor cannot use, as for DigitAnatomy)."""
    root = Path(str(data.get("root", "")))
    if data.get("kind") != "image_folder" or not root.exists() or not domain.supported(prep.size):
        return None
    selection = Path(str((data.get("selection") or {}).get("root", "")))
    return fit_and_calibrate(
        root, selection if selection.name and selection.exists() else None, prep, progress
    )


def read_metadata(model: onnx.ModelProto) -> ArtifactMetadata:
    props = {entry.key: entry.value for entry in model.metadata_props}
    if METADATA_KEY not in props:
        raise DomainGateError("not a SQUID artifact: no metadata")
    return ArtifactMetadata.from_json(props[METADATA_KEY])


def with_gate(
    model: onnx.ModelProto, metadata: ArtifactMetadata, fitted: domain.DomainModel, population: dict[str, Any]
) -> tuple[onnx.ModelProto, ArtifactMetadata]:
    """The artifact with ``fitted`` spliced in (replacing an earlier domain model) and its metadata."""
    gated = domain.attach(domain.detach(model), fitted)
    return gated, replace(metadata, domain=fitted.describe(), population=population)


def check_identical(before: onnx.ModelProto, after: onnx.ModelProto, images: NDArray[np.float32]) -> None:
    """Every model output equal bit for bit, with the optional outputs on and off."""
    from training.export import feeds, session

    batch = np.ascontiguousarray(images[:, None], dtype=np.float32)
    old, new = session(before), session(after)
    for optional in (True, False):
        expected = old.run(list(OUTPUT_NAMES), feeds(batch, optional))
        got = new.run(list(OUTPUT_NAMES), feeds(batch, optional))
        for name, a, b in zip(OUTPUT_NAMES, expected, got, strict=True):
            if a.shape != b.shape or not np.array_equal(a, b):
                raise DomainGateError(f"{name} changed when the domain model was added; nothing written")


def add_to_artifact(
    artifact: Path,
    out: Path,
    training: Path,
    selection: Path | None,
    population: dict[str, Any] | None = None,
    check_count: int = 32,
    progress: bool = False,
) -> dict[str, Any]:
    """Fit, splice and record the gate in an exported artifact; returns the ``domain`` metadata.

    ``population`` defaults to the one known for ``training`` (:mod:`training.populations`).
    """
    from training.export import attach_metadata, write_atomically

    model = onnx.load(str(artifact))
    metadata = read_metadata(model)
    prep = Preprocessing.from_spec(metadata.preprocessing, metadata.input_size)
    if not domain.supported(prep.size):
        raise DomainGateError(f"input size {prep.size} is not supported by the domain descriptor")
    fitted = fit_and_calibrate(training, selection, prep, progress)
    chosen = population if population is not None else known_population(training) or metadata.population
    gated, new_metadata = with_gate(model, metadata, fitted, chosen)
    attach_metadata(gated, new_metadata)
    try:
        onnx.checker.check_model(gated, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise DomainGateError(f"ONNX checker rejected the gated artifact: {exc}") from exc
    records = folders.scan_dataset(Path(training))
    step = max(1, len(records) // check_count)
    check_images = folders.load_images(records[::step][:check_count], prep, progress=False)
    check_identical(domain.detach(model), gated, check_images)
    write_atomically(gated, Path(out))
    return json.loads(json.dumps(new_metadata.domain))
