"""``squid score``: the scoring steps every entry point shares (:mod:`model.steps`) on local files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from model.dicom_results import ModelInfo, NotBuilt, write_for_upload
from model.domain import GATE_WARNINGS
from model.heatmap import overlay_png
from model.imaging import DecodedImage, ImageRejected, OutOfDomain
from model.runtime import ScoreResult, open_runtime
from model.steps import Prepared, infer, prepare, verdict
from service.settings import get_settings


def score_files(
    files: list[Path],
    model: Path | None,
    threshold: float | None,
    heatmap: Path | None,
    as_json: bool,
    dicom_out: Path | None = None,
    operating_point: str | None = None,
) -> int:
    """Print one line per file; return how many could not be scored."""
    settings = get_settings()
    runtime = open_runtime(settings, model=model, threshold=threshold, operating_point=operating_point)
    if heatmap:
        heatmap.mkdir(parents=True, exist_ok=True)
    model_info = ModelInfo.from_metadata(runtime.metadata)
    failures = 0
    for path in files:
        try:
            data = path.read_bytes()
            full = settings.decode_full_resolution
            item: Prepared = prepare(
                data, runtime.preprocessing, settings.max_pixels, runtime.gate, full_resolution=full
            )
            result = verdict(
                runtime.gate, item, infer(runtime, [item], with_map=bool(heatmap or dicom_out))[0][0]
            )
        except OutOfDomain as exc:
            failures += 1
            typer.echo(json.dumps(out_of_domain_row(path, exc)) if as_json else out_of_domain_line(path, exc))
            continue
        except (ImageRejected, OSError) as exc:
            failures += 1
            reason = exc.reason if isinstance(exc, ImageRejected) else "unreadable"
            detail = exc.detail if isinstance(exc, ImageRejected) else str(exc)
            rejected = {"file": str(path), "status": "rejected", "reason": reason, "detail": detail}
            typer.echo(json.dumps(rejected) if as_json else f"{path}\trejected\t{reason}: {detail}")
            continue
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
            target.write_bytes(overlay_png(item.decoded.pixels, result.map_or_raise(), vmax=result.map_scale))
            row["heatmap"] = str(target)
        if dicom_out:
            row.update(dicom_fields(data, item.decoded, result, model_info, dicom_out))
        if as_json:
            typer.echo(json.dumps(row))
        else:
            line = f"{path}\tscore={result.score:.4f}\t{label}\tthreshold={result.threshold:.4f}"
            # The text line shows the warnings that qualify the verdict (--json has them all).
            line += "".join(f"\twarning={code}" for code in item.decoded.warnings if code in GATE_WARNINGS)
            typer.echo(line + "".join(f"\t{kind}={file}" for kind, file in row.get("dicom", {}).items()))
            if "dicom_skipped" in row:
                typer.echo(f"{path}\tno DICOM results\t{row['dicom_skipped']['reason']}", err=True)
    return failures


def out_of_domain_row(path: Path, exc: OutOfDomain) -> dict[str, Any]:
    """``--json``: no score, no label, the gate's reasons."""
    return {
        "file": str(path),
        "status": "out_of_domain",
        "reasons": exc.reasons,
        "detail": exc.detail,
        "warnings": exc.warnings,
    }


def out_of_domain_line(path: Path, exc: OutOfDomain) -> str:
    return f"{path}\tout_of_domain\t{','.join(exc.reasons)}: {exc.detail}"


def dicom_fields(
    data: bytes, decoded: DecodedImage, result: ScoreResult, model: ModelInfo, folder: Path
) -> dict[str, Any]:
    """``--dicom-out``: the written SR and SC, or why a scored file has none (PNG/JPEG, no UIDs...)."""
    try:
        written = write_for_upload(data, decoded, result, model, folder)
    except NotBuilt as exc:
        return {"dicom_skipped": {"reason": exc.reason, "detail": exc.detail}}
    return {"dicom": {kind: str(file) for kind, file in written.items()}}
