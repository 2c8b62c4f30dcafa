"""How far a reduced decode moves the model input and the calibrated score, against a full decode.

Test-dev films (every ``--step``-th one, plus the ones nearest the threshold) are enlarged to
radiograph sizes and written in eleven transfer syntaxes, as ``tests/model/test_reduced_decode.py``
does; each file is prepared twice with ``model.steps.prepare`` (the default reduced decode, and
``full_resolution=True``) and scored by the shipped model. Reported per syntax: the largest and the
median score change, label flips, and the model input's mean and largest absolute difference
(after histogram equalisation, the shipped model's intensity mode).

Usage: ``python bench/decode_fidelity.py [--step 40] [--nearest 4]``
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.runtime import SquidRuntime  # noqa: E402
from model.steps import decode_side, prepare  # noqa: E402
from tests.model.test_reduced_decode import (  # noqa: E402
    FULL_SIZES,
    films_near_the_threshold,
    full_size_files,
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--step", type=int, default=40, help="every n-th test-dev film")
    parser.add_argument("--nearest", type=int, default=4, help="films nearest the threshold")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "decode_fidelity.json")
    args = parser.parse_args()
    runtime = SquidRuntime(intra_op_threads=1)
    prep = runtime.preprocessing
    spread = sorted((args.data / "zhanglab-224" / "test-dev").glob("*/*.jpeg"))[:: args.step]
    films = list(dict.fromkeys([*films_near_the_threshold(args.data, args.nearest), *spread]))
    moves: dict[str, list[float]] = defaultdict(list)
    inputs: dict[str, list[tuple[float, float]]] = defaultdict(list)
    flips: dict[str, int] = defaultdict(int)
    with tempfile.TemporaryDirectory() as scratch:
        for index, path in enumerate(films):
            files = full_size_files(path, FULL_SIZES[index % len(FULL_SIZES)], index, Path(scratch))
            reduced = [prepare(data, prep, 10**8) for data in files.values()]
            full = [prepare(data, prep, 10**8, full_resolution=True) for data in files.values()]
            results = runtime.score(np.stack([item.array for item in reduced + full]), with_map=False)
            for i, name in enumerate(files):
                a, b = results[i], results[len(files) + i]
                moves[name].append(a.score - b.score)
                flips[name] += a.is_anomalous != b.is_anomalous
                difference = np.abs(reduced[i].array - full[i].array)
                inputs[name].append((float(difference.mean()), float(difference.max())))
            print(path.name, {name: round(values[-1], 4) for name, values in moves.items()}, flush=True)
    per_syntax: dict[str, Any] = {
        name: {
            "films": len(values),
            "max_abs_score_change": round(max(abs(v) for v in values), 4),
            "median_score_change": round(float(np.median(values)), 4),
            "label_flips": flips[name],
            "input_mean_abs_difference": round(float(np.mean([m for m, _ in inputs[name]])), 4),
            "input_max_abs_difference": round(max(x for _, x in inputs[name]), 4),
        }
        for name, values in moves.items()
    }
    report = {
        "benchmark": "decode_fidelity",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "model": runtime.metadata.model_version,
        "decode_min_side": decode_side(prep),
        "films": [path.name for path in films],
        "results": per_syntax,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(per_syntax, indent=1))


if __name__ == "__main__":
    main()
