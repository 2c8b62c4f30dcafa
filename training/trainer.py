"""The SQUID training loop (thesis section 3.6, 4.1.5): D every iteration, generators every second.

Model selection is on AUC, never on the last epoch: the discriminator's signal moves a lot between
epochs. Each epoch the AUC is measured with both inference normalisations of the discriminator on the
validation split held out of the training folder and, when one is given, on a separate selection set
from the target domain (for ZhangLab: test-dev, half of the official test split). The best
(epoch, normalisation) pair by the selection metric is kept, calibrated and thresholded.
"""

from __future__ import annotations

import copy
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
from model.network.ensemble import Judge
from training import checkpoint as ckpt
from training.augment import random_affine, random_intensity
from training.metrics import metrics_at, roc_auc
from training.provenance import git_commit, package_version
from training.scoring import score_images
from training.thresholds import choose

log = logging.getLogger(__name__)


@dataclass
class LabelledSet:
    """Preprocessed images with labels (0 normal, 1 anomalous)."""

    images: NDArray[np.float32]
    labels: NDArray[np.int64]


@dataclass
class TrainData:
    """Preprocessed arrays: training normals, a labelled validation split, an optional selection set.

    ``selection`` is target-domain data that chooses the epoch, the normalisation and the threshold
    in place of the validation split; it is never trained on.
    """

    train: NDArray[np.float32]
    val_images: NDArray[np.float32]
    val_labels: NDArray[np.int64]
    source: dict[str, Any] = field(default_factory=dict)
    selection: LabelledSet | None = None

    def selection_set(self) -> LabelledSet:
        return self.selection or LabelledSet(self.val_images, self.val_labels)


def calibrate(
    generator: SquidGenerator,
    judge: Judge,
    data: TrainData,
    threshold_rule: str,
    norm: str | None = None,
) -> tuple[Calibration, dict[str, Any], dict[str, Any]]:
    """mu/sigma on the un-augmented training normals; the threshold (and the 0.90-specificity
    operating point) on the selection set, the validation split when there is none.

    Returns the calibration, the threshold record and the metrics at that threshold on the
    validation split (with the selection set's under ``selection``)."""
    train_raw, _ = score_images(generator, judge, data.train, norm=norm)
    calibration = Calibration.fit(train_raw)

    def calibrated(images: NDArray[np.float32]) -> NDArray[np.float64]:
        return calibration.apply(score_images(generator, judge, images, norm=norm)[0])

    chosen = data.selection_set()
    scores = calibrated(chosen.images)
    threshold = choose(threshold_rule, chosen.labels, scores)
    spec90 = choose("specificity", chosen.labels, scores, specificity=0.90)
    val_scores = calibrated(data.val_images) if data.selection is not None else scores
    metrics: dict[str, Any] = metrics_at(data.val_labels, val_scores, threshold.value).to_dict()
    if data.selection is not None:
        metrics["selection"] = metrics_at(chosen.labels, scores, threshold.value).to_dict()
    record = threshold.to_dict()
    record["operating_points"] = {"default": threshold.to_dict(), "spec90": spec90.to_dict()}
    return calibration, record, metrics


@dataclass
class TrainOptions:
    epochs: int
    seed: int = 0
    threshold_rule: str = "f1_optimal"
    max_minutes: float | None = None
    progress: bool = True
    score_norms: tuple[str, ...] = SCORE_NORMS
    selection_warmup: float = 0.1
    selection_window: int = 1
    keep_epochs: bool = False

    def first_candidate_epoch(self) -> int:
        """Epochs before this one are never selected: an untrained discriminator can separate the
        validation classes by accident (on ZhangLab, epoch 1 scored well while its generator still
        produced a featureless blur), and such a model's heatmaps mean nothing."""
        return max(1, math.ceil(self.epochs * self.selection_warmup) + 1) if self.epochs > 1 else 1


def last_path(out: Path) -> Path:
    """Where the resumable state of the latest epoch lives, next to the best checkpoint."""
    return out.with_name(out.stem + ".last" + out.suffix)


def epoch_path(out: Path, epoch: int) -> Path:
    """Where ``keep_epochs`` puts the scoring weights of one epoch, for analyses after training."""
    return out.with_name(f"{out.stem}.epochs") / f"e{epoch:04d}{out.suffix}"


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
        self.ema: tuple[SquidGenerator, Discriminator] | None = None
        if config.ema_decay > 0:
            self.ema = (copy.deepcopy(self.generator), copy.deepcopy(self.discriminator))
        self.steps = 0
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best_auc = -math.inf
        self.best_epoch = 0
        self.train_seconds = 0.0
        self.train_tensor = torch.from_numpy(np.ascontiguousarray(data.train))[:, None]

    # -- schedule -------------------------------------------------------------------------
    def _lr(self, epoch: int) -> float:
        """Cosine annealing from lr towards lr_min, one step per epoch.

        With ``schedule_stretch`` s > 1 the cosine spans s times the planned epochs, so training ends
        before the minimum (the reference code's T_max = 300 for 200 epochs is s = 1.5).
        """
        c = self.config
        span = max(1.0, (self.options.epochs - 1) * c.schedule_stretch)
        progress = epoch / span if self.options.epochs > 1 else 1.0
        return c.lr_min + 0.5 * (c.lr - c.lr_min) * (1 + math.cos(math.pi * min(progress, 1.0)))

    # -- one epoch ------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        c = self.config
        lr = self._lr(self.epoch)
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                group["lr"] = c.lr if opt is self.opt_d and c.d_lr_constant else lr
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
            images = random_intensity(
                images, c.gamma_range, c.window_jitter, c.blur_sigma_max, rng, c.noise_sigma_max
            )
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
        real_logits, fake_logits = self._judge(images, fake.detach())
        loss_d = c.lambda_dis * (
            F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        )
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        losses = {"d": float(loss_d.detach())}
        if not generator_step:
            self._update_ema()
            return losses
        assert out.teacher_reconstruction is not None
        loss_s = F.mse_loss(fake, images)
        loss_t = F.mse_loss(out.teacher_reconstruction, images)
        loss_dist = sum(
            (F.mse_loss(s, t) for s, t in zip(out.student_features, out.teacher_features, strict=True)),
            torch.zeros(()),
        )
        _, gen_logits = self._judge(images, fake)
        loss_gen = F.binary_cross_entropy_with_logits(gen_logits, torch.ones_like(gen_logits))
        total = (
            c.lambda_s * loss_s + c.lambda_t * loss_t + c.lambda_dist * loss_dist + c.lambda_gen * loss_gen
        )
        self.opt_g.zero_grad(set_to_none=True)
        total.backward()
        self.opt_g.step()
        self.generator.commit_to_queue()
        self._update_ema()
        losses.update(
            {
                k: float(v.detach())
                for k, v in (("s", loss_s), ("t", loss_t), ("dist", loss_dist), ("gen", loss_gen))
            }
        )
        return losses

    def _judge(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """D's logits on a real and a fake batch: separately (reference), or as one mixed batch so
        that BatchNorm statistics cannot tell the two apart; ``d_input_noise`` adds instance noise
        to both, which keeps D from separating them perfectly by imperceptible detail."""
        if self.config.d_input_noise > 0:
            real = real + torch.randn_like(real) * self.config.d_input_noise
            fake = fake + torch.randn_like(fake) * self.config.d_input_noise
        if self.config.d_mixed_batches:
            logits = self.discriminator(torch.cat([real, fake]))
            return logits[: len(real)], logits[len(real) :]
        return self.discriminator(real), self.discriminator(fake)

    @torch.no_grad()
    def _update_ema(self) -> None:
        """Exponential moving average of both networks' weights; buffers (the memory queue, BN
        statistics) are copied, since averaging queue items would blend unrelated patches."""
        self.steps += 1
        if self.ema is None:
            return
        decay = min(self.config.ema_decay, (1 + self.steps) / (10 + self.steps))
        for averaged, live in zip(self.ema, (self.generator, self.discriminator), strict=True):
            for a, p in zip(averaged.parameters(), live.parameters(), strict=True):
                a.lerp_(p, 1 - decay)
            for kept, current in zip(averaged.buffers(), live.buffers(), strict=True):
                kept.copy_(current)

    def scoring_networks(self) -> tuple[SquidGenerator, Discriminator]:
        """The weights that score: the moving averages when EMA is on, else the live networks."""
        return self.ema if self.ema is not None else (self.generator, self.discriminator)

    # -- validation and selection ---------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """AUC for each inference normalisation of D (anomalous = low logit): ``val_auc_<norm>`` on the
        validation split and, with a selection set, ``sel_auc_<norm>`` on it."""
        generator, discriminator = self.scoring_networks()
        sets = {"val": LabelledSet(self.data.val_images, self.data.val_labels)}
        if self.data.selection is not None:
            sets["sel"] = self.data.selection
        result = {}
        for name, labelled in sets.items():
            for norm in self.options.score_norms:
                raw, _ = score_images(generator, discriminator, labelled.images, norm=norm)
                result[f"{name}_auc_{norm}"] = roc_auc(labelled.labels, -raw)
        return result

    def selection_metric(self, norm: str) -> float:
        """The AUC that selects: on the selection set (else validation), averaged over the last
        ``selection_window`` epochs so that one lucky epoch does not win."""
        key = f"{'sel' if self.data.selection is not None else 'val'}_auc_{norm}"
        window = self.history[-self.options.selection_window :]
        return float(np.mean([h[key] for h in window]))

    def calibrate(self, norm: str) -> tuple[Calibration, dict[str, Any], dict[str, Any]]:
        generator, discriminator = self.scoring_networks()
        return calibrate(generator, discriminator, self.data, self.options.threshold_rule, norm)

    def fit(self) -> ckpt.Checkpoint:
        """Train to ``epochs`` (or the time budget), checkpointing every epoch; return the best."""
        budget = self.options.max_minutes * 60 if self.options.max_minutes else None
        while self.epoch < self.options.epochs:
            stats = self.train_epoch()
            aucs = self.validate()
            self.epoch += 1
            record = {"epoch": self.epoch, **stats, **aucs}
            self.history.append(record)
            metric = {n: self.selection_metric(n) for n in self.options.score_norms}
            norm = max(metric, key=lambda k: metric[k])
            candidate = self.epoch >= self.options.first_candidate_epoch()
            improved = candidate and metric[norm] > self.best_auc
            log.info("epoch %d: %s", self.epoch, record)
            if self.options.progress:
                tqdm.write(
                    f"epoch {self.epoch}: "
                    + ", ".join(f"AUC[{k}]={v:.4f}" for k, v in aucs.items())
                    + f", {stats['images_per_second']:.1f} img/s"
                    + (" (best)" if improved else "")
                )
            if improved:
                self.best_auc, self.best_epoch = metric[norm], self.epoch
                ckpt.save(self.snapshot(norm, calibrated=True), self.out)
            ckpt.save(self.snapshot(norm, calibrated=False, with_optimizers=True), last_path(self.out))
            if self.options.keep_epochs:
                ckpt.save(self.snapshot(norm, calibrated=False), epoch_path(self.out, self.epoch))
            if budget is not None and self.train_seconds >= budget:
                log.info("time budget of %.1f min reached after epoch %d", budget / 60, self.epoch)
                break
        if self.best_epoch == 0:
            # Stopped before the selection warm-up ended: the latest epoch is all there is.
            log.warning("no epoch after the selection warm-up was reached; keeping epoch %d", self.epoch)
            norm = max(self.options.score_norms, key=self.selection_metric)
            ckpt.save(self.snapshot(norm, calibrated=True), self.out)
            self.best_epoch = self.epoch
        best = ckpt.load(self.out)
        best.history = self.history
        ckpt.save(best, self.out)
        return best

    def snapshot(self, norm: str, calibrated: bool, with_optimizers: bool = False) -> ckpt.Checkpoint:
        """A checkpoint of this epoch. The best checkpoint holds the scoring weights; the resumable
        ``.last`` one (``with_optimizers``) the live weights, with optimisers, moving averages and
        the selection state beside them."""
        calibration = threshold = None
        validation: dict[str, Any] = {}
        if calibrated:
            cal, threshold, validation = self.calibrate(norm)
            calibration = cal.to_dict()
        generator, discriminator = (
            (self.generator, self.discriminator) if with_optimizers else self.scoring_networks()
        )
        resume_state: dict[str, Any] | None = None
        if with_optimizers:
            resume_state = {
                "g": self.opt_g.state_dict(),
                "d": self.opt_d.state_dict(),
                "best_auc": self.best_auc,
                "best_epoch": self.best_epoch,
                "steps": self.steps,
            }
            if self.ema is not None:
                resume_state["ema_g"] = _weights(self.ema[0])
                resume_state["ema_d"] = _weights(self.ema[1])
        return ckpt.Checkpoint(
            config=self.config.to_dict(),
            generator=_weights(generator),
            discriminator=_weights(discriminator),
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
            optimizers=resume_state,
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
        if self.ema is not None:
            self.ema[0].load_state_dict(state.optimizers["ema_g"])
            self.ema[1].load_state_dict(state.optimizers["ema_d"])
        self.steps = int(state.optimizers.get("steps", 0))
        self.best_auc = float(state.optimizers["best_auc"])
        self.best_epoch = int(state.optimizers.get("best_epoch", 0))
        if self.best_epoch < self.options.first_candidate_epoch():
            # The saved best predates the selection warm-up (or a checkpoint without the field).
            self.best_auc, self.best_epoch = -math.inf, 0
        self.epoch, self.history, self.train_seconds = (
            state.epoch,
            list(state.history),
            state.train_seconds,
        )


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}
