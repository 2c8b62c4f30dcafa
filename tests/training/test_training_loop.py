"""The training loop end to end on tiny synthetic data: determinism, checkpoints, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tests.training.tiny_model import tiny_config  # noqa: E402
from training import checkpoint as ckpt  # noqa: E402
from training.scoring import score_images  # noqa: E402
from training.trainer import LabelledSet, TrainData, Trainer, TrainOptions, last_path  # noqa: E402

pytestmark = pytest.mark.slow  # several tiny training runs


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


def one_epoch_at_a_time(tmp_path, name, epochs, config=None, data=None):
    """Train ``epochs`` epochs as a user interrupted after every epoch would: fit, resume, fit..."""
    out = tmp_path / f"{name}.ckpt"
    for done in range(epochs):
        trainer = Trainer(
            config or tiny_config(),
            data or tiny_data(),
            out,
            TrainOptions(epochs=epochs, seed=0, progress=False, max_minutes=1e-9),
        )
        if done:
            trainer.resume(ckpt.load(last_path(out)))
        trainer.fit()
        assert trainer.epoch == done + 1
    return ckpt.load(out)


def selection_data():
    """Tiny data whose selection set makes the best epoch an early one for this seed."""
    data = tiny_data()
    data.selection = LabelledSet(data.val_images[::-1].copy(), data.val_labels[::-1].copy())
    return data


def test_resume_after_the_best_epoch_keeps_the_best_checkpoint(tmp_path):
    straight = Trainer(
        tiny_config(), selection_data(), tmp_path / "straight.ckpt", TrainOptions(epochs=5, progress=False)
    )
    reference = straight.fit()
    resumed = one_epoch_at_a_time(tmp_path, "resumed", 5, data=selection_data())
    assert resumed.epoch == reference.epoch
    assert resumed.threshold == reference.threshold and resumed.validation == reference.validation
    for key in reference.generator:
        assert torch.equal(resumed.generator[key], reference.generator[key]), key


def test_resume_restores_the_best_epoch_and_its_auc(tmp_path):
    trainer = Trainer(
        tiny_config(), selection_data(), tmp_path / "m.ckpt", TrainOptions(epochs=4, progress=False)
    )
    trainer.fit()
    assert trainer.best_epoch >= trainer.options.first_candidate_epoch()
    again = Trainer(
        tiny_config(), selection_data(), tmp_path / "m.ckpt", TrainOptions(epochs=4, progress=False)
    )
    again.resume(ckpt.load(last_path(tmp_path / "m.ckpt")))
    assert (again.best_epoch, again.best_auc) == (trainer.best_epoch, trainer.best_auc)


def test_resuming_a_finished_run_changes_nothing(tmp_path):
    _, best = run(tmp_path, "done", 3)
    before = (tmp_path / "done.ckpt").read_bytes()
    trainer = Trainer(
        tiny_config(), tiny_data(), tmp_path / "done.ckpt", TrainOptions(epochs=3, progress=False)
    )
    trainer.resume(ckpt.load(last_path(tmp_path / "done.ckpt")))
    again = trainer.fit()
    assert again.epoch == best.epoch and trainer.epoch == 3
    for key in best.generator:
        assert torch.equal(again.generator[key], best.generator[key]), key
    assert ckpt.load(tmp_path / "done.ckpt").history == best.history
    assert len(before) > 0


def test_selection_set_chooses_the_epoch_and_the_threshold(tmp_path):
    data = selection_data()
    trainer = Trainer(tiny_config(), data, tmp_path / "s.ckpt", TrainOptions(epochs=4, progress=False))
    best = trainer.fit()
    assert all({"sel_auc_instance", "sel_auc_eval", "val_auc_instance"} <= set(h) for h in best.history)
    chosen = best.history[best.epoch - 1][f"sel_auc_{best.score_norm}"]
    candidates = [max(h["sel_auc_instance"], h["sel_auc_eval"]) for h in best.history[1:]]
    assert chosen == pytest.approx(max(candidates))
    assert best.validation["selection"]["auc"] == pytest.approx(chosen)
    points = best.threshold["operating_points"]
    assert points["default"]["value"] == best.threshold["value"]
    assert points["spec90"]["rule"] == "specificity" and points["spec90"]["detail"]["specificity"] >= 0.9


def test_ema_checkpoint_scores_with_the_averaged_weights(tmp_path):
    config = tiny_config().replace(ema_decay=0.9)
    trainer = Trainer(config, tiny_data(), tmp_path / "e.ckpt", TrainOptions(epochs=2, progress=False))
    best = trainer.fit()
    live = ckpt.load(last_path(tmp_path / "e.ckpt"))
    weights = [k for k in best.generator if k.endswith("weight")]
    assert any(not torch.equal(best.generator[k], live.generator[k]) for k in weights)
    ema_g, _ = trainer.scoring_networks()
    for key, value in ema_g.state_dict().items():
        assert torch.equal(best.generator[key], value), key
    assert torch.equal(best.generator["inpaint.queue.items"], live.generator["inpaint.queue.items"])


@pytest.mark.parametrize(
    "change",
    [
        {"d_mixed_batches": True},
        {"gamma_range": (0.6, 1.6), "window_jitter": 0.1, "blur_sigma_max": 1.0, "noise_sigma_max": 0.03},
        {"d_lr_constant": True, "schedule_stretch": 1.5},
    ],
)
def test_recipe_options_train_and_resume_to_the_same_weights(tmp_path, change):
    config = tiny_config().replace(**change)
    straight = Trainer(config, tiny_data(), tmp_path / "a.ckpt", TrainOptions(epochs=2, progress=False))
    straight.fit()
    resumed = one_epoch_at_a_time(tmp_path, "b", 2, config=config)
    reference = ckpt.load(last_path(tmp_path / "a.ckpt"))
    assert resumed.epoch == ckpt.load(tmp_path / "a.ckpt").epoch
    for key in reference.generator:
        assert torch.equal(ckpt.load(last_path(tmp_path / "b.ckpt")).generator[key], reference.generator[key])


def test_learning_rate_schedules():
    options = TrainOptions(epochs=11, progress=False)
    plain = Trainer(tiny_config(), tiny_data(), Path("unused.ckpt"), options)
    stretched = Trainer(
        tiny_config().replace(schedule_stretch=1.5), tiny_data(), Path("unused.ckpt"), options
    )
    c = plain.config
    assert plain._lr(0) == pytest.approx(c.lr) and plain._lr(10) == pytest.approx(c.lr_min)
    assert c.lr_min < stretched._lr(10) < c.lr  # the reference's T_max = 1.5 x epochs ends above lr_min
    assert stretched._lr(10) == pytest.approx(c.lr_min + 0.5 * (c.lr - c.lr_min) * (1 + np.cos(np.pi / 1.5)))
