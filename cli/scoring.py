"""``squid score``: the HTTP service's scoring path (``service.pipeline``) on local files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from model.heatmap import overlay_png
from model.imaging import ImageRejected
from model.runtime import SquidRuntime
from service.pipeline import Prepared, infer, prepare
from service.settings import get_settings


def score_files(
    files: list[Path], model: Path | None, threshold: float | None, heatmap: Path | None, as_json: bool
) -> int:
    """Print one line per file; return how many could not be scored."""
    settings = get_settings()
    runtime = SquidRuntime(model or settings.model_path, threshold=threshold)
    if heatmap:
        heatmap.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in files:
        try:
            item: Prepared = prepare(path.read_bytes(), runtime.input_size, settings.max_pixels)
        except (ImageRejected, OSError) as exc:
            failures += 1
            reason = exc.reason if isinstance(exc, ImageRejected) else "unreadable"
            detail = exc.detail if isinstance(exc, ImageRejected) else str(exc)
            rejected = {"file": str(path), "status": "rejected", "reason": reason, "detail": detail}
            typer.echo(json.dumps(rejected) if as_json else f"{path}\trejected\t{reason}: {detail}")
            continue
        result = infer(runtime, [item])[0][0]
        label = "anomalous" if result.is_anomalous else "normal"
        row: dict[str, Any] = {
            "file": str(path),
            "status": "scored",
            "score": round(result.score, 6),
            "label": label,
            "threshold": round(result.threshold, 6),
            "raw_score": round(result.raw_score, 6),
            "warnings": item.decoded.warnings,
        }
        if heatmap:
            target = heatmap / f"{path.stem}.heatmap.png"
            target.write_bytes(overlay_png(item.decoded.pixels, result.anomaly_map))
            row["heatmap"] = str(target)
        if as_json:
            typer.echo(json.dumps(row))
        else:
            typer.echo(f"{path}\tscore={result.score:.4f}\t{label}\tthreshold={result.threshold:.4f}")
    return failures
