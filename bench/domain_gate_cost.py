"""What the domain gate's image check adds to a plain score: the same artifact with and without its
domain nodes (``training.domain.detach``), one run, interleaved, medians.

Usage: python bench/domain_gate_cost.py [--artifact model/artifacts/squid-default.onnx]
Writes bench/results/domain_gate_cost.json: ms per call at batch 1 and 16 (no map), both artifacts.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from model.runtime import SquidRuntime
from training.domain import detach
from training.domain_export import read_metadata
from training.export import attach_metadata

BATCHES = (1, 16)
REPEATS = 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifact", type=Path, default=Path("model/artifacts/squid-default.onnx"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/domain_gate_cost.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        plain_path = Path(folder) / "plain.onnx"
        gated = onnx.load(str(args.artifact))
        plain = detach(gated)
        attach_metadata(plain, replace(read_metadata(gated), domain={}))
        onnx.save(plain, str(plain_path))
        runtimes = {
            "with the domain gate": SquidRuntime(args.artifact, intra_op_threads=2),
            "without": SquidRuntime(plain_path, intra_op_threads=2),
        }
        rng = np.random.default_rng(0)
        result: dict[str, dict[str, float]] = {name: {} for name in runtimes}
        for batch in BATCHES:
            images = rng.random((batch, 128, 128), dtype=np.float32)
            times: dict[str, list[float]] = {name: [] for name in runtimes}
            for runtime in runtimes.values():
                runtime.score(images, with_map=False)  # warm-up
            for _ in range(REPEATS):  # interleaved, so load changes hit both alike
                for name, runtime in runtimes.items():
                    start = time.perf_counter()
                    runtime.score(images, with_map=False)
                    times[name].append((time.perf_counter() - start) * 1e3)
            for name in runtimes:
                result[name][f"batch {batch} ms"] = round(statistics.median(times[name]), 3)
    report = {"machine": platform.processor() or platform.machine(), "repeats": REPEATS, "median_ms": result}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
