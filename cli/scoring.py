"""``squid score``: read, preprocess and score files with the torch-free runtime."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from model.heatmap import overlay_png
from model.imaging import ImageRejected, read_path
from model.preprocess import preprocess
from model.runtime import SquidRuntime


def score_files(
    files: list[Path], model: Path | None, threshold: float | None, heatmap: Path | None, as_json: bool
) -> int:
    """Print one line per file; return how many could not be scored."""
    runtime = SquidRuntime(model, threshold=threshold)
    if heatmap:
        heatmap.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in files:
        try:
            decoded = read_path(path)
        except (ImageRejected, OSError) as exc:
            failures += 1
            reason = exc.reason if isinstance(exc, ImageRejected) else "unreadable"
            detail = exc.detail if isinstance(exc, ImageRejected) else str(exc)
            row: dict[str, Any] = {"file": str(path), "status": "rejected", "reason": reason, "detail": detail}
            typer.echo(json.dumps(row) if as_json else f"{path}\trejected\t{reason}: {detail}")
            continue
        result = runtime.score(preprocess(decoded.pixels, runtime.input_size)[None])[0]
        row = {
            "file": str(path),
            "status": "scored",
            "score": round(result.score, 6),
            "label": "anomalous" if result.is_anomalous else "normal",
            "threshold": round(result.threshold, 6),
            "raw_score": round(result.raw_score, 6),
            "warnings": decoded.warnings,
        }
        if heatmap:
            target = heatmap / f"{path.stem}.heatmap.png"
            target.write_bytes(overlay_png(decoded.pixels, result.anomaly_map))
            row["heatmap"] = str(target)
        if as_json:
            typer.echo(json.dumps(row))
        else:
            typer.echo(f"{path}\tscore={result.score:.4f}\t{row['label']}\tthreshold={result.threshold:.4f}")
    return failures
