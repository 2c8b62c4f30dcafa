"""Batch job routes (POST/GET/DELETE /jobs). Filled in by the batch-jobs work."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["jobs"])
