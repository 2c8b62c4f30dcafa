"""Several trained checkpoints -> one ensemble checkpoint whose raw score is their mean logit.

The members must be the same recipe on the same data and validation split (only the seed differs),
and their discriminators must judge the input (``score_on="input"``): a discriminator that judges
reconstructions was trained against its own generator's, and only one generator is kept (the first
member's, which supplies the reconstruction that is shown). The ensemble is calibrated and
thresholded afresh, exactly as training does for one model (:func:`training.trainer.calibrate`),
on the first member's recorded training data and selection set, so ``squid export`` and
``squid evaluate`` treat it like any checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from training import checkpoint as ckpt
from training.pipeline import SplitSpec, prepare_data, preprocessing_of
from training.trainer import calibrate

# Fields of the recorded data that must agree: the same training normals and validation split.
SAME_DATA = ("digest", "validation_digest", "split")


def combine(
    members: Sequence[ckpt.Checkpoint],
    threshold_rule: str = "f1_optimal",
    selection: Path | None = None,
    progress: bool = True,
) -> ckpt.Checkpoint:
    """The ensemble of ``members`` (calibrated best checkpoints), calibrated and thresholded."""
    if len(members) < 2:
        raise ValueError("an ensemble needs at least two checkpoints")
    first = members[0]
    if first.squid_config().score_on != "input":
        raise ValueError(
            "an ensemble needs discriminators that judge the input (score_on=input): each one that judges "
            "reconstructions was trained against its own generator"
        )
    for other in members[1:]:
        if other.members:
            raise ValueError("an ensemble's members must be single models, not ensembles")
        if {**other.config} != {**first.config}:
            raise ValueError("the members were trained with different configs; an ensemble needs one recipe")
        differing = [k for k in SAME_DATA if other.data.get(k) != first.data.get(k)]
        if differing:
            raise ValueError(f"the members were trained on different data or splits ({', '.join(differing)})")
    root = Path(first.data.get("root", ""))
    if not root.exists():
        raise FileNotFoundError(f"the training data {root} is gone: calibrating the ensemble needs it")
    chosen = selection or first.data.get("selection", {}).get("root")
    data = prepare_data(
        root,
        preprocessing_of(first.squid_config()),
        SplitSpec(**first.data.get("split", {})),
        progress,
        Path(chosen) if chosen else None,
    )
    ensemble = dataclasses.replace(
        first,
        members=[
            {"discriminator": m.discriminator, "score_norm": m.score_norm, "seed": m.seed, "epoch": m.epoch}
            for m in members[1:]
        ],
        data={**first.data, **{k: v for k, v in data.source.items() if k == "selection"}},
        optimizers=None,
        train_seconds=sum(m.train_seconds for m in members),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    generator, judge = ensemble.build()
    calibration, threshold, validation = calibrate(generator, judge, data, threshold_rule)
    ensemble.calibration, ensemble.threshold, ensemble.validation = (
        calibration.to_dict(),
        threshold,
        validation,
    )
    return ensemble
