"""Batch job routes: ``POST /jobs``, ``GET /jobs/{id}``, ``GET /jobs/{id}/results``, ``DELETE /jobs/{id}``.

Thin routes over :class:`service.jobs.manager.JobManager` (a typed dependency cached on the app state);
the work runs on the Celery workers. Errors are raised (``JobError``, ``ArchiveError``, ``ApiError``)
and answered by the one handler in :mod:`service.errors`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.requests import ClientDisconnect

from service.deps import JobManagerDep
from service.errors import (
    INVALID_REQUEST,
    TOO_LARGE,
    UNSUPPORTED_MEDIA_TYPE,
    ApiError,
    client_closed,
    documented_errors,
)
from service.jobs.archive import check_archive, remove_tree
from service.jobs.manager import JobManager, JobView, results_storage
from service.uploads import ZIP_TYPES, spool_upload

router = APIRouter(tags=["jobs"])

DICOM_OUT_HELP = (
    "Also write a DICOM SR and secondary capture of every scored DICOM file into the results folder "
    "(dicom/), indexed by dicom_outputs.csv (GET /jobs/{id}/results?level=dicom)."
)
MAX_JSON_BYTES = 64 * 1024
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson; charset=utf-8"}


class JobPathRequest(BaseModel):
    path: str = Field(description="Folder inside SQUID_IMPORT_ROOT: relative to it, or absolute.")
    dicom_out: bool = Field(False, description=DICOM_OUT_HELP)


class JobFailure(BaseModel):
    reason: str
    detail: str


class JobEvent(BaseModel):
    """One entry of a job's log: ``worker_lost`` (a worker stopped beating and its task was sent
    again), ``results_disk_full`` / ``results_not_writable`` (a task could not write its results and
    is retried after ``retry_in_s``; the last one, without it, failed the job)."""

    at: str
    event: str
    unit: str = Field(description="What was affected: 'chunk:N', 'plan' or 'finalize'.")
    worker: str = Field(description="The worker concerned (host:pid).")
    detail: str
    retry_in_s: float | None = Field(None, description="When the task is tried again (storage events).")


class JobOut(BaseModel):
    """A job's state and progress: ``done`` = ``scored`` + ``skipped`` + ``out_of_domain`` + ``failed``
    (of ``total``).

    ``succeeded`` means every file has a result row; files that could not be scored are counted in
    ``failed`` and ``failures`` (by reason), each with its reason in the results; images the domain
    gate refused are counted in ``out_of_domain``. ``failed`` means the job itself could not finish
    (``error`` says why) and publishes no results.
    """

    id: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    source: str = Field(description="'path' or 'zip'.")
    label: str = Field(description="The folder relative to the import root, or 'upload.zip'.")
    total: int = Field(description="Files found (0 until a worker walked the tree).")
    done: int = Field(description="Files with a result row so far, whatever the outcome.")
    scored: int
    resumed: int = Field(description="Of the scored files, those whose score an earlier job computed.")
    skipped: int = Field(description="Not scoreable by design (not an image, SR, no pixels, ...).")
    out_of_domain: int = Field(
        description="Images the domain gate refused (CT, lateral, non-chest, not a chest radiograph, ...): "
        "no score, their rows say why in domain_reasons."
    )
    failed: int = Field(description="Should have scored but could not (truncated, undecodable, ...).")
    failures: dict[str, int] = Field(
        description="The failed files by reason, e.g. {'undecodable': 2, 'kills_worker': 1}."
    )
    chunks: int
    chunks_done: int
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    elapsed_s: float | None
    files_per_s: float | None = Field(description="Throughput: done / elapsed.")
    model_version: str | None
    threshold: float | None
    error: JobFailure | None = Field(
        description="Why a job failed (results_disk_full, results_not_writable, state_lost, ...)."
    )
    stage_ms_per_file: dict[str, float] = Field(
        description="Worker time per file by stage (read, decode, preprocess, inference, write), in ms."
    )
    dicom_out: bool = Field(description="Whether the job writes DICOM SR and secondary capture results.")
    chunks_redelivered: int = Field(
        description="Chunks sent again because the worker running them was lost (see events)."
    )
    events: list[JobEvent] = Field(
        description="The job's log, oldest first: worker_lost, results_disk_full, results_not_writable."
    )
    results: dict[str, str] | None = Field(description="Result URLs once the job succeeded.")


def _out(view: JobView, request: Request) -> JobOut:
    results = None
    if view.state == "succeeded":
        base = str(request.url_for("job_results", job_id=view.id))
        levels = ("instance", "study", "dicom") if view.dicom_out else ("instance", "study")
        results = {
            f"{level}_{fmt}": f"{base}?format={fmt}&level={level}"
            for level in levels
            for fmt in ("csv", "jsonl")
        }
        if view.dicom_out:
            results["dicom_zip"] = str(request.url_for("get_dicom_archive", job_id=view.id))
    data = {name: getattr(view, name) for name in JobOut.model_fields if name != "results"}
    return JobOut(**data, results=results)


_POST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": JobPathRequest.model_json_schema()},
            "application/zip": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
        },
    }
}
_ERRORS = documented_errors(
    (403, "path outside SQUID_IMPORT_ROOT (also via '..' or symlinks), or folder jobs disabled"),
    (404, "no such folder / job"),
    (409, "job not finished (results) or already finished (cancel)"),
    (413, "zip upload or its uncompressed content too large"),
    (415, "body is neither JSON nor a zip archive"),
    (422, "invalid path or body"),
    (503, "no broker configured, Redis unreachable, or the results folder full / not writable"),
)


@router.post("/jobs", status_code=202, response_model=JobOut, openapi_extra=_POST_BODY, responses=_ERRORS)
async def create_job(
    request: Request,
    response: Response,
    manager: JobManagerDep,
    dicom_out: Annotated[bool, Query(description=DICOM_OUT_HELP)] = False,
) -> JobOut:
    """Start a job over a folder inside the import root (JSON ``{"path": ...}``) or an uploaded zip
    (raw ``application/zip`` body or multipart field ``file``); ``dicom_out`` (query, or JSON field)
    adds DICOM SR and secondary capture results.

    Returns at once (202, ``Location: /jobs/{id}``); a worker walks the tree and scores it in chunks.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        try:
            raw = b"".join([chunk async for chunk in _limited(request.stream(), MAX_JSON_BYTES)])
        except ClientDisconnect:
            raise client_closed() from None
        try:
            body = JobPathRequest.model_validate(json.loads(raw))
        except (ValueError, ValidationError):
            raise ApiError(422, INVALID_REQUEST, 'expected a JSON object {"path": "<folder>"}') from None
        view = await anyio.to_thread.run_sync(manager.submit_path, body.path, body.dicom_out or dicom_out)
    elif content_type in ZIP_TYPES or content_type == "multipart/form-data":
        view = await _submit_upload(request, manager, dicom_out)
    else:
        raise ApiError(
            415, UNSUPPORTED_MEDIA_TYPE, 'send JSON {"path": ...}, a zip body or a multipart field "file"'
        )
    response.headers["Location"] = f"/jobs/{view.id}"
    return _out(view, request)


async def _limited(stream: AsyncIterator[bytes], limit: int) -> AsyncGenerator[bytes, None]:
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise ApiError(413, TOO_LARGE, f"the request body exceeds {limit} bytes")
        yield chunk


async def _submit_upload(request: Request, manager: JobManager, dicom_out: bool = False) -> JobView:
    settings = manager.settings
    limit = int(settings.max_zip_mb * (1 << 20))
    job_id, job_dir = await anyio.to_thread.run_sync(manager.new_job)
    target = job_dir / "upload.zip"
    try:
        with results_storage():
            await spool_upload(request, limit, target)
        extract_limit = int(settings.max_zip_extract_mb * (1 << 20))
        await anyio.to_thread.run_sync(check_archive, target, extract_limit)
        return await anyio.to_thread.run_sync(manager.submit_zip, job_id, job_dir, dicom_out)
    except BaseException:
        remove_tree(job_dir)
        raise


@router.get("/jobs/{job_id}", response_model=JobOut, responses=_ERRORS)
def get_job(job_id: str, request: Request, manager: JobManagerDep) -> JobOut:
    """State, counts (total, done, scored, resumed, skipped, out_of_domain, failed), times and throughput."""
    return _out(manager.get(job_id), request)


@router.get("/jobs/{job_id}/results", name="job_results", responses=_ERRORS)
def get_results(
    job_id: str,
    manager: JobManagerDep,
    format: Annotated[Literal["csv", "jsonl"], Query(description="csv or jsonl")] = "csv",
    level: Annotated[
        Literal["instance", "study", "dicom"],
        Query(description="instance or study rows, or dicom (the DICOM objects of a dicom_out job)"),
    ] = "instance",
) -> Response:
    """The result file: one row per file (``instance``), per study, or per DICOM result object, as CSV
    or JSON Lines."""
    path = manager.result_file(job_id, level, format)
    return FileResponse(path, media_type=MEDIA_TYPES[format], filename=f"{job_id}-{path.name}")


class JobList(BaseModel):
    """A page of the jobs of this results folder, newest first."""

    total: int
    offset: int
    limit: int
    jobs: list[JobOut]


@router.get("/jobs", response_model=JobList, responses=_ERRORS)
def list_jobs(
    request: Request,
    manager: JobManagerDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JobList:
    """The jobs, newest first, with their state and progress (the web page's job list)."""
    total, views = manager.list_jobs(offset, limit)
    return JobList(total=total, offset=offset, limit=limit, jobs=[_out(view, request) for view in views])


@router.get(
    "/jobs/{job_id}/dicom.zip",
    responses={**_ERRORS, 200: {"content": {"application/zip": {}}, "description": "the DICOM outputs"}},
)
def get_dicom_archive(job_id: str, manager: JobManagerDep) -> FileResponse:
    """Every DICOM SR and secondary capture of a succeeded ``dicom_out`` job, with
    ``dicom_outputs.csv``, as one zip."""
    path = manager.dicom_archive(job_id)
    return FileResponse(path, media_type="application/zip", filename=f"{job_id}-dicom-outputs.zip")


@router.delete("/jobs/{job_id}", response_model=JobOut, responses=_ERRORS)
def cancel_job(job_id: str, request: Request, manager: JobManagerDep) -> JobOut:
    """Cancel a queued or running job: chunks not yet started are dropped; results are not published."""
    return _out(manager.cancel(job_id), request)
