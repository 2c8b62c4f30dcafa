"""The training loop end to end on tiny synthetic data: determinism, checkpoints, resume."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tests.training.tiny_model import tiny_config  # noqa: E402
from training import checkpoint as ckpt  # noqa: E402
from training.scoring import score_images  # noqa: E402
from training.trainer import TrainData, Trainer, TrainOptions, last_path  # noqa: E402


def tiny_data(seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    base = (0.5 + 0.4 * np.sin(3 * xx) * np.cos(2 * yy)).astype(np.float32)
    train = np.clip(base + rng.normal(0, 0.02, (12, 64, 64)), 0, 1).astype(np.float32)
    normal = np.clip(base + rng.normal(0, 0.02, (4, 64, 64)), 0, 1).astype(np.float32)
    abnormal = normal.copy()
    abnormal[:, 20:44, 20:44] = 1.0
    val = np.concatenate([normal, abnormal])
    return TrainData(train, val, np.array([0] * 4 + [1] * 4), {"kind": "synthetic"})


def run(tmp_path, name, epochs, seed=0):
    trainer = Trainer(
        tiny_config(),
        tiny_data(),
        tmp_path / f"{name}.ckpt",
        TrainOptions(epochs=epochs, seed=seed, progress=False),
    )
    return trainer, trainer.fit()


def test_same_seed_gives_identical_weights(tmp_path):
    _, a = run(tmp_path, "a", 2, seed=3)
    _, b = run(tmp_path, "b", 2, seed=3)
    for key in a.generator:
        assert torch.equal(a.generator[key], b.generator[key]), key
    _, c = run(tmp_path, "c", 2, seed=4)
    assert any(not torch.equal(a.generator[k], c.generator[k]) for k in a.generator)


def test_checkpoint_round_trip_gives_identical_scores(tmp_path):
    _, best = run(tmp_path, "m", 2)
    generator, discriminator = best.build()
    images = tiny_data().val_images
    before, _ = score_images(generator, discriminator, images)
    ckpt.save(best, tmp_path / "copy.ckpt")
    generator2, discriminator2 = ckpt.load(tmp_path / "copy.ckpt").build()
    after, _ = score_images(generator2, discriminator2, images)
    np.testing.assert_array_equal(before, after)
    assert torch.equal(generator2.inpaint.queue.pointers, generator.inpaint.queue.pointers)
    assert int(generator2.inpaint.queue.pointers.sum()) > 0  # the queue was written during training


def test_best_checkpoint_is_calibrated_and_thresholded_with_provenance(tmp_path):
    _, best = run(tmp_path, "m", 2)
    assert best.calibration is not None and best.calibration["sigma"] > 0
    assert best.threshold["rule"] == "f1_optimal"
    assert 0.0 <= best.threshold["value"] <= 1.0
    assert {"auc", "f1", "sensitivity", "specificity"} <= set(best.validation)
    assert best.score_norm in ("instance", "eval")
    assert best.seed == 0 and best.epochs == 2 and best.package_version and best.git_commit
    assert len(best.history) == 2
    assert best.epoch == 2  # epoch 1 is inside the selection warm-up
    chosen = best.history[best.epoch - 1][f"val_auc_{best.score_norm}"]
    assert best.validation["auc"] == pytest.approx(chosen)
    assert chosen == max(best.history[1]["val_auc_instance"], best.history[1]["val_auc_eval"])


def test_resume_continues_to_the_same_weights(tmp_path):
    run(tmp_path, "straight", 2)
    first = Trainer(
        tiny_config(),
        tiny_data(),
        tmp_path / "resumed.ckpt",
        TrainOptions(epochs=2, seed=0, progress=False, max_minutes=1e-9),
    )
    first.fit()  # the time budget stops it after one epoch
    assert first.epoch == 1
    second = Trainer(
        tiny_config(),
        tiny_data(),
        tmp_path / "resumed.ckpt",
        TrainOptions(epochs=2, seed=0, progress=False),
    )
    second.resume(ckpt.load(last_path(tmp_path / "resumed.ckpt")))
    second.fit()
    final = ckpt.load(last_path(tmp_path / "resumed.ckpt"))
    reference = ckpt.load(last_path(tmp_path / "straight.ckpt"))
    for key in reference.generator:
        assert torch.equal(final.generator[key], reference.generator[key]), key


def test_selection_keeps_the_best_epoch_after_the_warm_up(tmp_path):
    trainer = Trainer(tiny_config(), tiny_data(), tmp_path / "w.ckpt", TrainOptions(epochs=4, progress=False))
    assert trainer.options.first_candidate_epoch() == 2
    best = trainer.fit()
    candidates = trainer.history[1:]
    top = max(max(h["val_auc_instance"], h["val_auc_eval"]) for h in candidates)
    chosen = trainer.history[best.epoch - 1]
    assert best.epoch >= 2
    assert max(chosen["val_auc_instance"], chosen["val_auc_eval"]) == pytest.approx(top)
    assert best.score_norm == max(("instance", "eval"), key=lambda k: chosen[f"val_auc_{k}"])


def test_resume_refuses_a_different_config(tmp_path):
    run(tmp_path, "m", 1)
    other = Trainer(
        tiny_config().replace(top_k=3),
        tiny_data(),
        tmp_path / "o.ckpt",
        TrainOptions(epochs=1, progress=False),
    )
    with pytest.raises(ValueError, match="different config"):
        other.resume(ckpt.load(last_path(tmp_path / "m.ckpt")))
