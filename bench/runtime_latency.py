"""Per-image latency (batch 1) and throughput (batch 16, 64): torch eager vs onnxruntime, one run.

Usage: python bench/runtime_latency.py --checkpoint runs/lite.ckpt \
    --artifact model/artifacts/squid-default.onnx
Writes bench/results/runtime_latency.json with medians per (runtime, batch) and the speed-up ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from model.runtime import SquidRuntime
from training import checkpoint as ckpt
from training.export import build_chain

BATCHES = (1, 16, 64)


def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--extra-artifacts", type=Path, nargs="*", default=[])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("bench/results/runtime_latency.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    chain = build_chain(ckpt.load(args.checkpoint))
    runtimes: dict[str, Callable[[np.ndarray], Any]] = {}

    def torch_eager(batch: np.ndarray) -> Any:
        with torch.inference_mode():
            return chain(torch.from_numpy(batch))

    runtimes["torch_eager_fp32"] = torch_eager
    for path in [args.artifact, *args.extra_artifacts]:
        rt = SquidRuntime(path, intra_op_threads=args.threads)
        runtimes[f"onnxruntime_{rt.metadata.precision}_{path.stem}"] = rt.run
    size = chain.generator.config.image_size
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    for batch_size in BATCHES:
        batch = rng.random((batch_size, 1, size, size), dtype=np.float32)
        repeats = args.repeats if batch_size < 64 else max(3, args.repeats // 2)
        for name, fn in runtimes.items():
            times = timed(partial(fn, batch), repeats)
            median = statistics.median(times)
            rows.append(
                {
                    "runtime": name,
                    "batch": batch_size,
                    "median_seconds": median,
                    "ms_per_image": median * 1e3 / batch_size,
                    "images_per_second": batch_size / median,
                    "runs": len(times),
                }
            )
            print(f"{name:>40} batch {batch_size:>3}: {median * 1e3 / batch_size:7.2f} ms/image")
    ratios: dict[str, float] = {}
    for batch_size in BATCHES:
        base = next(r for r in rows if r["runtime"] == "torch_eager_fp32" and r["batch"] == batch_size)
        for r in rows:
            if r["batch"] == batch_size and r is not base:
                ratios[f"{r['runtime']}@{batch_size}"] = base["median_seconds"] / r["median_seconds"]
    result = {
        "machine": {
            "platform": platform.platform(),
            "threads": args.threads,
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
        },
        "rows": rows,
        "speedup_vs_torch": ratios,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
