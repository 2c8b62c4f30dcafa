"""Training throughput (images/s) per preset on this machine, written to bench/results/.

Runs a few full SQUID iterations (D step every batch, generator step every second batch) on random
images after a warm-up, and reports the median over repeats.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from model.config import preset
from training.trainer import TrainData, Trainer, TrainOptions


def measure(name: str, iterations: int, repeats: int) -> dict[str, float | str | int]:
    config = preset(name)
    n = config.batch_size * 2
    images = np.random.default_rng(0).random((n, config.image_size, config.image_size), np.float32)
    data = TrainData(images, images[:4], np.array([0, 0, 1, 1]))
    trainer = Trainer(config, data, Path("/tmp/unused.ckpt"), TrainOptions(epochs=1, progress=False))
    batch = torch.from_numpy(images[: config.batch_size])[:, None]
    for i in range(2):
        trainer._step(batch, generator_step=i % 2 == 0)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(iterations):
            trainer._step(batch, generator_step=i % config.generator_every == 0)
        rates.append(iterations * config.batch_size / (time.perf_counter() - start))
    params = sum(p.numel() for p in trainer.generator.parameters())
    return {
        "preset": name,
        "images_per_second_median": statistics.median(rates),
        "images_per_second_runs": rates,
        "generator_parameters": params,
        "discriminator_parameters": sum(p.numel() for p in trainer.discriminator.parameters()),
        "batch_size": config.batch_size,
        "iterations": iterations,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--presets", nargs="+", default=["thesis", "lite"])
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/train_throughput.json"))
    args = parser.parse_args()
    results = {
        "machine": {
            "cpus": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "results": [measure(name, args.iterations, args.repeats) for name in args.presets],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for row in results["results"]:
        print(f"{row['preset']:>8}: {row['images_per_second_median']:.1f} img/s")


if __name__ == "__main__":
    main()
