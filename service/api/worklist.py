"""The worklist: studies of a job and of the DICOM node in one table ranked by score (issue 27).

``GET /worklist`` pages over the SQLite indexes of :mod:`service.worklist` (a job's is brought up to
date from its chunk files first, the node's is written by ``squid listen``); a study and its images
are ``GET /jobs/{id}/studies/{key}`` or ``GET /node/studies/{key}``; an image's thumbnail and the
viewer's pictures hang below them. A job's pictures are drawn on request from its source file, the
node's were kept when it scored (its sources are gone).
"""

from __future__ import annotations

import asyncio
import base64
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from model.imaging.headers import peek_patient
from service.deps import AppState, JobManagerDep, StateDep, get_job_manager
from service.errors import ApiError, documented_errors
from service.jobs.manager import JobManager
from service.jobs.results import ResultStore
from service.jobs.walker import resolve_inside
from service.node.records import THUMBNAIL_NAME, node_index_path, node_view_folder
from service.settings import Settings
from service.worklist.index import LABELS, SORT_COLUMNS, STATUSES, PageQuery, WorklistIndex, query_page
from service.worklist.ingest import sync_job_index
from service.worklist.views import ImageView, read_view, render_view

router = APIRouter(tags=["worklist"])

Source = Literal["job", "node"]
_ERRORS = documented_errors(
    (404, "no such job, study or image"),
    (410, "the image's source file is gone (zip jobs drop theirs when they end)"),
    (422, "invalid filter, or the source file cannot be read as an image any more"),
    (503, "no broker configured (jobs), Redis unreachable, or the model still loading (views)"),
)
PNG: dict[int | str, dict[str, Any]] = {200: {"content": {"image/png": {}}, "description": "a PNG"}}


class WorklistStudy(BaseModel):
    """One study of the worklist; its images' best score ranks it."""

    source: Source
    job_id: str | None = Field(description="The job the study belongs to (source 'job').")
    study_key: str = Field(description="Study Instance UID, or 'file:<key>' for a file without one.")
    study_instance_uid: str
    accession_number: str
    study_date: date | None
    patient_name: str | None = Field(description="Only with SQUID_WORKLIST_PATIENT_IDENTIFIERS.")
    patient_id: str | None = Field(description="Only with SQUID_WORKLIST_PATIENT_IDENTIFIERS.")
    label: str | None = Field(description=f"The study's verdict, one of {list(LABELS)}; null when unscored.")
    flagged: bool = Field(description="At least one image at or above the threshold.")
    status: str = Field(description=f"One of {list(STATUSES)}: scored when any image was.")
    score: float | None = Field(description="The highest score of its images.")
    images: int
    scored: int
    reasons: list[str] = Field(description="Why images were skipped or failed (reason codes).")
    warnings: list[str] = Field(description="Warnings of its images (small_image, lossy_compression, ...).")
    received_at: str | None = Field(description="When the node scored it (source 'node').")
    thumbnail_url: str
    study_url: str


class WorklistPage(BaseModel):
    total: int = Field(description="Studies matching the filters, over every source.")
    offset: int
    limit: int
    studies: list[WorklistStudy]


class WorklistFacets(BaseModel):
    """The values the filters and the sort take (the page builds its controls from them)."""

    labels: list[str]
    statuses: list[str]
    sorts: list[str]
    patient_identifiers: bool = Field(description="Whether patient name and ID are shown.")
    node: bool = Field(description="Whether the DICOM node has recorded any study here.")


class StudyImage(BaseModel):
    image_key: str
    path: str = Field(description="Path in the job's folder (the node: the received file's name).")
    series_instance_uid: str
    sop_instance_uid: str
    status: str
    reason: str
    detail: str
    score: float | None
    label: str | None
    warnings: list[str]
    thumbnail_url: str
    view_url: str | None = Field(description="The viewer's pictures; scored images only.")


class StudyDetail(BaseModel):
    study: WorklistStudy
    images: list[StudyImage]


class ImageViewOut(BaseModel):
    """What the viewer shows of one image; the pictures are base64 PNGs (film and map of one size)."""

    score: float
    raw_score: float
    is_anomalous: bool
    threshold: float
    warnings: list[str]
    film_png_base64: str
    map_png_base64: str = Field(description="The anomaly map alone (RGBA): stack it on the film.")
    input_png_base64: str = Field(description="The model's input (after preprocessing).")
    reconstruction_png_base64: str = Field(description="SQUID's in-painted reconstruction of the input.")


@router.get("/worklist/facets", response_model=WorklistFacets)
def facets(state: StateDep) -> WorklistFacets:
    """Labels, statuses and sort keys of the worklist, and which columns this server shows."""
    settings = state.settings
    return WorklistFacets(
        labels=list(LABELS),
        statuses=list(STATUSES),
        sorts=list(SORT_COLUMNS),
        patient_identifiers=settings.worklist_patient_identifiers,
        node=node_index_path(settings.node_state).is_file(),
    )


@router.get("/worklist", response_model=WorklistPage, responses=_ERRORS)
def worklist(
    state: StateDep,
    job: Annotated[str | None, Query(description="A job's id: its studies are listed.")] = None,
    node: Annotated[bool, Query(description="List the studies the DICOM node scored.")] = True,
    label: Annotated[list[str] | None, Query(description=f"Any of {list(LABELS)}; repeat.")] = None,
    status: Annotated[list[str] | None, Query(description=f"Any of {list(STATUSES)}; repeat.")] = None,
    date_from: Annotated[date | None, Query(description="Study date, inclusive.")] = None,
    date_to: Annotated[date | None, Query(description="Study date, inclusive.")] = None,
    sort: Annotated[
        Literal["score", "study_date", "accession_number"],
        Query(description="score: flagged studies first, then by their highest score."),
    ] = "score",
    order: Annotated[Literal["desc", "asc"], Query()] = "desc",
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> WorklistPage:
    """One page of studies of a job and/or the node, ranked (default: flagged first, highest score)."""
    labels, statuses = _checked("label", label, LABELS), _checked("status", status, STATUSES)
    settings = state.settings
    sources: dict[str, Path] = {}
    if job is not None:
        sources["job"] = _synced_job_index(_manager(state), job)
    node_index = node_index_path(settings.node_state)
    if node and node_index.is_file():
        sources["node"] = node_index
    query = PageQuery(
        labels=labels,
        statuses=statuses,
        date_from=date_from.strftime("%Y%m%d") if date_from else "",
        date_to=date_to.strftime("%Y%m%d") if date_to else "",
        sort=sort,
        descending=order == "desc",
        offset=offset,
        limit=limit,
    )
    page = query_page(sources, query)
    root = _job_root(state, job) if job is not None else None
    studies = [
        _study_out(row, job, _patient(settings, row, root, sources.get("job"))) for row in page.studies
    ]
    return WorklistPage(total=page.total, offset=offset, limit=limit, studies=studies)


@router.get("/jobs/{job_id}/studies/{study_key}", response_model=StudyDetail, responses=_ERRORS)
def job_study(job_id: str, study_key: str, state: StateDep) -> StudyDetail:
    """A job's study with the scores and reasons of each of its images."""
    path = _synced_job_index(_manager(state), job_id)
    return _study_detail(state, path, "job", study_key, job_id)


@router.get("/node/studies/{study_key}", response_model=StudyDetail, responses=_ERRORS)
def node_study(study_key: str, state: StateDep) -> StudyDetail:
    """A study the DICOM node scored, with the scores and reasons of each of its images."""
    return _study_detail(state, _node_index(state.settings), "node", study_key, None)


@router.get("/jobs/{job_id}/images/{image_key}/thumbnail", responses={**_ERRORS, **PNG})
def job_thumbnail(job_id: str, image_key: str, manager: JobManagerDep) -> Response:
    """A 96-pixel thumbnail of an image the workers decoded."""
    job_dir = manager.job_dir(job_id)
    image = _image(_synced_job_index(manager, job_id), image_key)
    png = (
        ResultStore(job_dir).thumbnail(int(image["chunk"]), image_key) if image["chunk"] is not None else None
    )
    if png is None:
        raise ApiError(404, "no_thumbnail", "this image has no thumbnail (not decoded, or resumed)")
    return _png(png)


@router.get("/node/images/{image_key}/thumbnail", responses={**_ERRORS, **PNG})
def node_thumbnail(image_key: str, state: StateDep) -> Response:
    """A 96-pixel thumbnail of an image the node scored."""
    _image(_node_index(state.settings), image_key)  # only keys the index knows reach the file system
    try:
        return _png((node_view_folder(state.settings.node_state, image_key) / THUMBNAIL_NAME).read_bytes())
    except OSError:
        raise ApiError(404, "no_thumbnail", "this image has no thumbnail") from None


@router.get("/jobs/{job_id}/images/{image_key}/view", response_model=ImageViewOut, responses=_ERRORS)
async def job_image_view(job_id: str, image_key: str, state: StateDep) -> ImageViewOut:
    """The viewer's pictures of a job's image, drawn now from its source file (map and
    reconstruction included), with the score they come with."""
    manager = _manager(state)
    image = _image(await run_in_threadpool(_synced_job_index, manager, job_id), image_key)
    root = _job_root(state, job_id)
    if root is None:
        raise ApiError(410, "source_removed", "the job's files are gone")
    try:
        data = await run_in_threadpool(lambda: resolve_inside(root, str(image["path"])).read_bytes())
    except (OSError, RuntimeError):
        raise ApiError(410, "source_removed", "the image's source file is gone or unreadable") from None
    runtime, _ = state.ready_parts()
    item = await state.prepare(data, runtime)
    view = await asyncio.get_running_loop().run_in_executor(state.executor, render_view, runtime, item)
    return _view_out(view)


@router.get("/node/images/{image_key}/view", response_model=ImageViewOut, responses=_ERRORS)
def node_image_view(image_key: str, state: StateDep) -> ImageViewOut:
    """The viewer's pictures of an image the node scored (kept when it was scored)."""
    _image(_node_index(state.settings), image_key)
    view = read_view(node_view_folder(state.settings.node_state, image_key))
    if view is None:
        raise ApiError(404, "no_view", "the node kept no pictures of this image")
    return _view_out(view)


def _checked(name: str, values: list[str] | None, allowed: tuple[str, ...]) -> tuple[str, ...]:
    unknown = sorted(set(values or ()) - set(allowed))
    if unknown:
        raise ApiError(422, f"invalid_{name}", f"unknown {name} {unknown}; one of {list(allowed)}")
    return tuple(values or ())


def _manager(state: AppState) -> JobManager:
    return get_job_manager(state)


def _synced_job_index(manager: JobManager, job_id: str) -> Path:
    view = manager.get(job_id)  # 404 for an unknown job, 503 when Redis is down
    # A cancelled job's running chunks may still land: only the other ends are final for its rows.
    return sync_job_index(manager.job_dir(job_id), finished=view.state in ("succeeded", "failed"))


def _node_index(settings: Settings) -> Path:
    path = node_index_path(settings.node_state)
    if not path.is_file():
        raise ApiError(404, "no_node_studies", "the DICOM node has recorded no study here")
    return path


def _image(index_path: Path, image_key: str) -> dict[str, Any]:
    with WorklistIndex(index_path, readonly=True) as index:
        image = index.image(image_key)
    if image is None:
        raise ApiError(404, "image_not_found", "no such image")
    return image


def _job_root(state: AppState, job_id: str) -> Path | None:
    """The folder a job's paths are relative to (its manifest's), when its files are still there."""
    manifest = ResultStore(_manager(state).job_dir(job_id)).read_manifest() or {}
    root = Path(str(manifest.get("root", "")))
    return root if manifest.get("root") and root.is_dir() else None


def _study_detail(
    state: AppState, index_path: Path, source: str, study_key: str, job_id: str | None
) -> StudyDetail:
    with WorklistIndex(index_path, readonly=True) as index:
        found = index.study(study_key)
    if found is None:
        raise ApiError(404, "study_not_found", "no such study")
    study, images = found
    row = {**study, "source": source}
    root = _job_root(state, job_id) if job_id is not None else None
    out = _study_out(row, job_id, _patient(state.settings, row, root, index_path))
    prefix = f"/jobs/{job_id}" if source == "job" else "/node"
    return StudyDetail(
        study=out,
        images=[
            StudyImage(
                image_key=image["image_key"],
                path=image["path"],
                series_instance_uid=image["series_instance_uid"],
                sop_instance_uid=image["sop_instance_uid"],
                status=image["status"],
                reason=image["reason"],
                detail=image["detail"],
                score=image["score"],
                label=image["label"] or None,
                warnings=_split(image["warnings"]),
                thumbnail_url=f"{prefix}/images/{image['image_key']}/thumbnail",
                view_url=f"{prefix}/images/{image['image_key']}/view"
                if image["status"] == "scored"
                else None,
            )
            for image in images
        ],
    )


def _study_out(
    row: dict[str, Any], job_id: str | None, patient: tuple[str | None, str | None]
) -> WorklistStudy:
    source = row["source"]
    prefix = f"/jobs/{job_id}" if source == "job" else "/node"
    name, patient_id = patient
    raw_date = str(row["study_date"] or "")
    return WorklistStudy(
        source=source,
        job_id=job_id if source == "job" else None,
        study_key=row["study_key"],
        study_instance_uid=row["study_instance_uid"],
        accession_number=row["accession_number"],
        study_date=date(int(raw_date[:4]), int(raw_date[4:6]), int(raw_date[6:8]))
        if _valid_date(raw_date)
        else None,
        patient_name=name,
        patient_id=patient_id,
        label=row["label"] or None,
        flagged=bool(row["flagged"]),
        status=row["status"],
        score=row["score"],
        images=row["images"],
        scored=row["scored"],
        reasons=_split(row["reasons"]),
        warnings=_split(row["warnings"]),
        received_at=row["received_at"] or None,
        thumbnail_url=f"{prefix}/images/{row['top_image']}/thumbnail",
        study_url=f"{prefix}/studies/{row['study_key']}",
    )


def _patient(
    settings: Settings, row: dict[str, Any], root: Path | None, index_path: Path | None
) -> tuple[str | None, str | None]:
    """Patient name and ID when the site allows them: the node recorded them; a job's are read from
    its source file's header now, so that no file of a job ever holds them."""
    if not settings.worklist_patient_identifiers:
        return None, None
    if row["source"] == "node":
        return row["patient_name"] or None, row["patient_id"] or None
    if root is None or index_path is None:
        return None, None
    image = _image(index_path, str(row["top_image"]))
    try:
        name, patient_id = peek_patient(resolve_inside(root, str(image["path"])))
    except (OSError, RuntimeError):
        return None, None
    return name or None, patient_id or None


def _valid_date(text: str) -> bool:
    try:
        date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return False
    return len(text) == 8


def _split(text: str) -> list[str]:
    return sorted({part for part in str(text or "").split(",") if part})


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


def _view_out(view: ImageView) -> ImageViewOut:
    encoded = {
        f"{name}_png_base64": base64.b64encode(png).decode("ascii") for name, png in view.pictures.items()
    }
    return ImageViewOut(**view.meta(), **encoded)
