"""The SQUID training loop (thesis section 3.6, 4.1.5): D every iteration, generators every second.

Model selection is on validation AUC, never on the last epoch: the discriminator's signal moves a lot
between epochs. Each epoch the validation AUC is measured with both inference normalisations of the
discriminator, and the best (epoch, normalisation) pair is kept, calibrated and thresholded.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from tqdm import tqdm

from model.calibration import Calibration
from model.config import SCORE_NORMS, SquidConfig
from model.network import Discriminator, SquidGenerator
from training import checkpoint as ckpt
from training.augment import random_affine
from training.metrics import metrics_at, roc_auc
from training.provenance import git_commit, package_version
from training.scoring import score_images
from training.thresholds import choose

log = logging.getLogger(__name__)


@dataclass
class TrainData:
    """Preprocessed arrays: training normals and a labelled validation split."""

    train: NDArray[np.float32]
    val_images: NDArray[np.float32]
    val_labels: NDArray[np.int64]
    source: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainOptions:
    epochs: int
    seed: int = 0
    threshold_rule: str = "f1_optimal"
    max_minutes: float | None = None
    progress: bool = True
    score_norms: tuple[str, ...] = SCORE_NORMS
    selection_warmup: float = 0.1

    def first_candidate_epoch(self) -> int:
        """Epochs before this one are never selected: an untrained discriminator can separate the
        validation classes by accident (on ZhangLab, epoch 1 scored well while its generator still
        produced a featureless blur), and such a model's heatmaps mean nothing."""
        return max(1, math.ceil(self.epochs * self.selection_warmup) + 1) if self.epochs > 1 else 1


def last_path(out: Path) -> Path:
    """Where the resumable state of the latest epoch lives, next to the best checkpoint."""
    return out.with_name(out.stem + ".last" + out.suffix)


class Trainer:
    """Owns the networks, optimisers and schedule of one run; ``fit`` writes checkpoints as it goes."""

    def __init__(self, config: SquidConfig, data: TrainData, out: Path, options: TrainOptions) -> None:
        if len(data.train) < 2:
            raise ValueError("need at least two training images")
        self.config, self.data, self.out, self.options = config, data, Path(out), options
        torch.manual_seed(options.seed)
        self.generator = SquidGenerator(config)
        self.discriminator = Discriminator(config)
        self.opt_g = torch.optim.Adam(
            self.generator.parameters(),
            lr=config.lr,
            betas=config.betas,
            weight_decay=config.weight_decay,
        )
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=config.lr, betas=config.betas)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best_auc = -math.inf
        self.best_epoch = 0
        self.train_seconds = 0.0
        self.train_tensor = torch.from_numpy(np.ascontiguousarray(data.train))[:, None]

    # -- schedule -------------------------------------------------------------------------
    def _lr(self, epoch: int) -> float:
        """Cosine annealing from lr to lr_min over the planned epochs (one step per epoch)."""
        c = self.config
        progress = epoch / max(1, self.options.epochs - 1) if self.options.epochs > 1 else 1.0
        return c.lr_min + 0.5 * (c.lr - c.lr_min) * (1 + math.cos(math.pi * min(progress, 1.0)))

    # -- one epoch ------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        c = self.config
        lr = self._lr(self.epoch)
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                group["lr"] = lr
        torch.manual_seed(self.options.seed * 100_003 + self.epoch)
        rng = torch.Generator().manual_seed(self.options.seed * 7919 + self.epoch)
        order = torch.randperm(len(self.train_tensor), generator=rng)
        batches = [order[i : i + c.batch_size] for i in range(0, len(order), c.batch_size)]
        batches = [b for b in batches if len(b) > 1]
        self.generator.train()
        self.discriminator.train()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        start = time.perf_counter()
        bar = tqdm(
            batches,
            desc=f"epoch {self.epoch + 1}/{self.options.epochs}",
            unit="batch",
            disable=not self.options.progress,
            leave=False,
        )
        for i, index in enumerate(bar):
            images = random_affine(self.train_tensor[index], c.translate, c.scale_range, rng)
            losses = self._step(images, generator_step=i % c.generator_every == 0)
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + value
                counts[key] = counts.get(key, 0) + 1
            rate = (i + 1) * c.batch_size / (time.perf_counter() - start)
            bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()} | {"img/s": f"{rate:.1f}"})
        bar.close()
        elapsed = time.perf_counter() - start
        self.train_seconds += elapsed
        means = {k: sums[k] / counts[k] for k in sums}
        means.update(lr=lr, seconds=elapsed, images_per_second=len(order) / elapsed)
        return means

    def _step(self, images: torch.Tensor, generator_step: bool) -> dict[str, float]:
        c = self.config
        if generator_step:
            out = self.generator(images)
        else:
            with torch.no_grad():
                out = self.generator(images, with_teacher=False)
        fake = out.reconstruction
        real_logits = self.discriminator(images)
        fake_logits = self.discriminator(fake.detach())
        loss_d = c.lambda_dis * (
            F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        )
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        losses = {"d": float(loss_d.detach())}
        if not generator_step:
            return losses
        assert out.teacher_reconstruction is not None
        loss_s = F.mse_loss(fake, images)
        loss_t = F.mse_loss(out.teacher_reconstruction, images)
        loss_dist = sum(
            (F.mse_loss(s, t) for s, t in zip(out.student_features, out.teacher_features, strict=True)),
            torch.zeros(()),
        )
        gen_logits = self.discriminator(fake)
        loss_gen = F.binary_cross_entropy_with_logits(gen_logits, torch.ones_like(gen_logits))
        total = (
            c.lambda_s * loss_s + c.lambda_t * loss_t + c.lambda_dist * loss_dist + c.lambda_gen * loss_gen
        )
        self.opt_g.zero_grad(set_to_none=True)
        total.backward()
        self.opt_g.step()
        self.generator.commit_to_queue()
        losses.update(
            {
                k: float(v.detach())
                for k, v in (("s", loss_s), ("t", loss_t), ("dist", loss_dist), ("gen", loss_gen))
            }
        )
        return losses

    # -- validation and selection ---------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Validation AUC for each inference normalisation of D (anomalous = low logit)."""
        result = {}
        for norm in self.options.score_norms:
            raw, _ = score_images(self.generator, self.discriminator, self.data.val_images, norm=norm)
            result[norm] = roc_auc(self.data.val_labels, -raw)
        return result

    def calibrate(self, norm: str) -> tuple[Calibration, dict[str, Any], dict[str, Any]]:
        """mu/sigma on the un-augmented training normals; threshold and metrics on validation."""
        train_raw, _ = score_images(self.generator, self.discriminator, self.data.train, norm=norm)
        calibration = Calibration.fit(train_raw)
        val_raw, _ = score_images(self.generator, self.discriminator, self.data.val_images, norm=norm)
        val_scores = calibration.apply(val_raw)
        threshold = choose(self.options.threshold_rule, self.data.val_labels, val_scores)
        metrics = metrics_at(self.data.val_labels, val_scores, threshold.value).to_dict()
        return calibration, threshold.to_dict(), metrics

    def fit(self) -> ckpt.Checkpoint:
        """Train to ``epochs`` (or the time budget), checkpointing every epoch; return the best."""
        budget = self.options.max_minutes * 60 if self.options.max_minutes else None
        while self.epoch < self.options.epochs:
            stats = self.train_epoch()
            aucs = self.validate()
            norm = max(aucs, key=lambda k: aucs[k])
            self.epoch += 1
            record = {"epoch": self.epoch, **stats, **{f"val_auc_{k}": v for k, v in aucs.items()}}
            self.history.append(record)
            candidate = self.epoch >= self.options.first_candidate_epoch()
            improved = candidate and aucs[norm] > self.best_auc
            log.info("epoch %d: %s", self.epoch, record)
            if self.options.progress:
                tqdm.write(
                    f"epoch {self.epoch}: "
                    + ", ".join(f"val AUC[{k}]={v:.4f}" for k, v in aucs.items())
                    + f", {stats['images_per_second']:.1f} img/s"
                    + (" (best)" if improved else "")
                )
            if improved:
                self.best_auc, self.best_epoch = aucs[norm], self.epoch
                ckpt.save(self.snapshot(norm, calibrated=True), self.out)
            ckpt.save(self.snapshot(norm, calibrated=False, with_optimizers=True), last_path(self.out))
            if budget is not None and self.train_seconds >= budget:
                log.info("time budget of %.1f min reached after epoch %d", budget / 60, self.epoch)
                break
        if self.best_epoch == 0:
            # Stopped before the selection warm-up ended: the latest epoch is all there is.
            log.warning("no epoch after the selection warm-up was reached; keeping epoch %d", self.epoch)
            norm = max(
                self.history[-1], key=lambda k: self.history[-1][k] if k.startswith("val_auc_") else -1
            )
            ckpt.save(self.snapshot(norm.removeprefix("val_auc_"), calibrated=True), self.out)
            self.best_epoch = self.epoch
        best = ckpt.load(self.out)
        best.history = self.history
        ckpt.save(best, self.out)
        return best

    def snapshot(self, norm: str, calibrated: bool, with_optimizers: bool = False) -> ckpt.Checkpoint:
        calibration = threshold = None
        validation: dict[str, Any] = {}
        if calibrated:
            cal, threshold, validation = self.calibrate(norm)
            calibration = cal.to_dict()
        return ckpt.Checkpoint(
            config=self.config.to_dict(),
            generator={k: v.clone() for k, v in self.generator.state_dict().items()},
            discriminator={k: v.clone() for k, v in self.discriminator.state_dict().items()},
            score_norm=norm,
            epoch=self.epoch,
            epochs=self.options.epochs,
            seed=self.options.seed,
            data=self.data.source,
            history=list(self.history),
            package_version=package_version(),
            git_commit=git_commit(),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            calibration=calibration,
            threshold=threshold,
            validation=validation,
            train_seconds=self.train_seconds,
            optimizers=(
                {
                    "g": self.opt_g.state_dict(),
                    "d": self.opt_d.state_dict(),
                    "best_auc": self.best_auc,
                }
                if with_optimizers
                else None
            ),
        )

    def resume(self, state: ckpt.Checkpoint) -> None:
        """Continue from a ``.last`` checkpoint: weights, queue, optimisers, epoch and history."""
        if state.config != self.config.to_dict():
            raise ValueError("cannot resume: the checkpoint was trained with a different config")
        if state.optimizers is None:
            raise ValueError("cannot resume: checkpoint has no optimiser state (use the .last file)")
        self.generator.load_state_dict(state.generator)
        self.discriminator.load_state_dict(state.discriminator)
        self.opt_g.load_state_dict(state.optimizers["g"])
        self.opt_d.load_state_dict(state.optimizers["d"])
        self.best_auc = float(state.optimizers["best_auc"])
        best_epoch = int(state.optimizers.get("best_epoch", 0))
        if best_epoch < self.options.first_candidate_epoch():
            self.best_auc = -math.inf  # the saved best predates the selection warm-up
        self.epoch, self.history, self.train_seconds = (
            state.epoch,
            list(state.history),
            state.train_seconds,
        )
