"""``GET /model``: the loaded artifact's embedded metadata and how this server uses it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.deps import StateDep

router = APIRouter(tags=["model"])


@router.get("/model", summary="Artifact metadata")
async def model_info(state: StateDep) -> dict[str, Any]:
    """The artifact's metadata (name, version, weights sha256, calibration, threshold rule, validation,
    training provenance) plus ``serving``: the active threshold and where it comes from."""
    runtime, _ = state.ready_parts()
    settings = state.settings
    info = runtime.metadata.to_dict()
    info["serving"] = {
        "threshold": runtime.threshold,
        "threshold_source": _threshold_source(settings.threshold, settings.operating_point),
        "operating_points": {"default": runtime.metadata.threshold, **runtime.metadata.operating_points},
        "artifact_threshold": runtime.metadata.threshold,
        "artifact_file": runtime.path.name,
        "providers": list(runtime.providers),
        "max_batch": settings.max_batch,
        "max_wait_ms": settings.max_wait_ms,
        "max_upload_mb": settings.max_upload_mb,
        "domain_gate": {
            "header_rules": sorted(runtime.gate.policy.header_rules),
            "age_rule": runtime.gate.policy.age_rule,
            "image_check": runtime.gate.policy.image_check,
            "image_check_available": runtime.has_domain_model,
        },
    }
    return info


def _threshold_source(threshold: float | None, operating_point: str | None) -> str:
    if threshold is not None:
        return "SQUID_THRESHOLD"
    return f"SQUID_OPERATING_POINT={operating_point}" if operating_point else "artifact"
