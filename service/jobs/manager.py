"""Submit, follow and cancel jobs on the workers: what the HTTP routes and ``squid batch`` call.

No model is loaded here and nothing heavy runs: submitting writes the job record, creates the Redis
state and sends one planning task; the walk happens on a worker. Errors are :class:`JobError` with a
reason code and the HTTP status to answer with.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from service.errors import ApiError
from service.jobs import dicom_outputs
from service.jobs.archive import remove_upload
from service.jobs.celery_config import PLAN_TASK, make_celery
from service.jobs.recovery import parse_events
from service.jobs.results import Format, Level, ResultStore
from service.jobs.state import (
    CANCELLED,
    COUNT_KEYS,
    FAILED,
    FINAL_STATES,
    QUEUED,
    SUCCEEDED,
    JobState,
    now_iso,
    parse_iso,
    published_counts,
    read_record,
    write_record,
)
from service.jobs.storage import describe, storage_reason
from service.jobs.walker import is_inside
from service.settings import Settings

log = logging.getLogger(__name__)

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_PATH_BYTES = 1024
MAX_PATH_PARTS = 64
MAX_NAME_BYTES = 255


class JobError(ApiError):
    """A request about jobs that cannot be served: ``status``, ``reason`` code, human ``detail``."""


@dataclass(frozen=True)
class JobView:
    """What ``GET /jobs/{id}`` shows."""

    id: str
    state: str
    source: str
    label: str
    total: int
    done: int
    scored: int  # includes resumed
    resumed: int
    skipped: int
    out_of_domain: int
    failed: int
    chunks: int
    chunks_done: int
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    elapsed_s: float | None
    files_per_s: float | None
    model_version: str | None
    threshold: float | None
    error: dict[str, str] | None
    stage_ms_per_file: dict[str, float]
    dicom_out: bool = False
    chunks_redelivered: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)  # failed rows by reason

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES


def resolve_job_path(raw: str, import_root: Path | None) -> Path:
    """The real folder ``raw`` names (absolute, or relative to the import root), if it lies inside."""
    if import_root is None:
        raise JobError(403, "path_forbidden", "folder jobs are disabled: SQUID_IMPORT_ROOT is not set")
    check_job_path(raw)
    root = import_root.resolve()
    candidate = Path(raw)
    candidate = candidate if candidate.is_absolute() else root / candidate
    try:
        resolved = candidate.resolve()  # follows every symlink and '..'
        if not is_inside(root, resolved):
            raise JobError(403, "path_forbidden", "path is outside the import root")
        if not resolved.exists():
            raise JobError(404, "path_not_found", "no such folder in the import root")
        if not resolved.is_dir():
            raise JobError(422, "not_a_directory", "path must name a folder")
    except RuntimeError:  # Python's message for a symbolic link loop
        raise JobError(422, "symlink_loop", "the path goes through a symbolic link loop") from None
    except OSError as exc:  # the message would quote the client's path
        raise JobError(
            422, "invalid_path", f"the path cannot be used ({errno.errorcode.get(exc.errno or 0, 'OSError')})"
        ) from None
    return resolved


def check_job_path(raw: str) -> None:
    """Refuse paths no file system holds before touching one: empty, NUL, not UTF-8, too long."""
    if not raw or "\x00" in raw:
        raise JobError(422, "invalid_path", "path must be a non-empty string")
    try:
        encoded = raw.encode("utf-8")
    except UnicodeEncodeError:
        raise JobError(422, "invalid_path", "path must be valid Unicode text (no lone surrogates)") from None
    if len(encoded) > MAX_PATH_BYTES:
        raise JobError(422, "invalid_path", f"path is longer than {MAX_PATH_BYTES} bytes")
    parts = [part for part in encoded.split(b"/") if part]
    if len(parts) > MAX_PATH_PARTS:
        raise JobError(422, "invalid_path", f"path has more than {MAX_PATH_PARTS} components")
    if any(len(part) > MAX_NAME_BYTES for part in parts):
        raise JobError(422, "invalid_path", f"a path component is longer than {MAX_NAME_BYTES} bytes")


@lru_cache(maxsize=8)
def _celery_for(broker_url: str, queue: str, visibility: int, time_limit: int) -> Celery:
    return make_celery(
        Settings(
            broker_url=broker_url, queue=queue, visibility_timeout_s=visibility, task_time_limit_s=time_limit
        )
    )


class JobManager:
    """Jobs of one broker (``settings.broker_url``), results under ``settings.results_dir``."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        if not settings.broker_url:
            raise JobError(
                503, "no_broker", "batch jobs need SQUID_BROKER_URL (run `squid batch` in-process)"
            )
        self.settings = settings
        self.client = client or redis.Redis.from_url(
            settings.broker_url, socket_connect_timeout=3, socket_timeout=10, health_check_interval=10
        )
        self.state = JobState(self.client, settings.key_prefix)
        self.celery = _celery_for(
            settings.broker_url, settings.queue, settings.visibility_timeout_s, settings.task_time_limit_s
        )

    @property
    def results_dir(self) -> Path:
        return self.settings.results_dir.resolve()

    def job_dir(self, job_id: str) -> Path:
        if not JOB_ID.match(job_id):
            raise JobError(404, "job_not_found", "no such job")
        return self.results_dir / job_id

    def new_job(self) -> tuple[str, Path]:
        job_id = uuid.uuid4().hex
        job_dir = self.results_dir / job_id
        with results_storage():
            job_dir.mkdir(parents=True)
        return job_id, job_dir

    def submit_folder(
        self,
        folder: Path,
        label: str,
        *,
        check_import_root: bool,
        dicom_out: bool = False,
        views: bool = False,
    ) -> JobView:
        """A job over ``folder`` (already resolved; checked against the import root by the caller).

        ``dicom_out``: also write the SR and SC of every scored DICOM file into the results folder.
        ``views``: also keep each scored image's viewer pictures (the node's jobs, whose sources go).
        """
        job_id, job_dir = self.new_job()
        return self._submit(job_id, job_dir, "path", label, folder, check_import_root, dicom_out, views)

    def submit_path(self, raw: str, dicom_out: bool = False) -> JobView:
        folder = resolve_job_path(raw, self.settings.import_root)
        root = self.settings.import_root.resolve() if self.settings.import_root else folder
        label = folder.relative_to(root).as_posix() if folder != root else "."
        return self.submit_folder(folder, label, check_import_root=True, dicom_out=dicom_out)

    def submit_zip(self, job_id: str, job_dir: Path, dicom_out: bool = False) -> JobView:
        """A job over ``job_dir/upload.zip`` (already written and checked by the caller)."""
        return self._submit(job_id, job_dir, "zip", "upload.zip", job_dir / "input", False, dicom_out)

    def _submit(
        self,
        job_id: str,
        job_dir: Path,
        source: str,
        label: str,
        root: Path,
        check_import_root: bool,
        dicom_out: bool = False,
        views: bool = False,
    ) -> JobView:
        created = now_iso()
        record = {
            "id": job_id,
            "state": QUEUED,
            "source": source,
            "label": label,
            "created_at": created,
            "dicom_out": "1" if dicom_out else "0",
            "views": "1" if views else "0",
        }
        try:
            with results_storage():
                write_record(job_dir, record)
        except JobError:
            shutil.rmtree(job_dir, ignore_errors=True)  # nothing of this job exists yet
            raise
        try:
            self.state.create(
                job_id,
                {
                    **record,
                    "root": str(root),
                    "job_dir": str(job_dir),
                    "check_import_root": "1" if check_import_root else "0",
                    "chunk_size": self.settings.chunk_size,
                },
            )
            self.celery.send_task(
                PLAN_TASK, args=[job_id], kwargs={"enqueued_at": time.time()}, queue=self.settings.queue
            )
        except Exception as exc:  # redis, kombu and socket errors alike: the job was not queued
            write_record(job_dir, {**record, "state": FAILED, "error_reason": "broker_unavailable"})
            raise JobError(
                503, "broker_unavailable", f"could not queue the job ({type(exc).__name__})"
            ) from None
        return self.get(job_id)

    def get(self, job_id: str) -> JobView:
        job_dir = self.job_dir(job_id)
        try:
            live = self.state.get(job_id)
            progress = self.state.progress(job_id) if live else None
        except redis.RedisError:
            raise JobError(503, "broker_unavailable", "job state is unreachable (Redis is down)") from None
        record = read_record(job_dir)
        if live is not None and progress is not None:
            return _view(live, progress)
        if record is None:
            raise JobError(404, "job_not_found", "no such job")
        if record.get("state") in FINAL_STATES:
            if record.get("source") == "zip":
                remove_upload(job_dir)  # Redis expired it: a worker that died before its clean-up left them
            return _view(record, record.get("progress") or {})
        if record.get("source") == "zip":
            remove_upload(job_dir)  # no worker will ever use it: the job can only be re-submitted
        lost = {
            **record,
            "state": FAILED,
            "error_reason": "state_lost",
            "error_detail": (
                "the broker lost this job's state (Redis restarted without persistence); "
                "re-submit the folder to resume: files already scored are not scored again"
            ),
        }
        return _view(lost, {})

    def cancel(self, job_id: str) -> JobView:
        view = self.get(job_id)
        if view.finished:
            raise JobError(409, "job_finished", f"the job already {view.state}")
        job_dir = self.job_dir(job_id)
        try:
            self.state.close(job_id, CANCELLED, int(self.settings.job_ttl_hours * 3600), job_dir)
        except redis.RedisError:
            raise JobError(503, "broker_unavailable", "job state is unreachable (Redis is down)") from None
        if view.source == "zip":
            remove_upload(job_dir)  # a worker still extracting stops at its next member and cleans up
        return self.get(job_id)

    def result_file(self, job_id: str, level: Level, fmt: Format) -> Path:
        view = self.get(job_id)
        if view.state != SUCCEEDED:
            raise JobError(
                409, "job_not_finished", f"results exist once the job succeeded (it is {view.state})"
            )
        path = ResultStore(self.job_dir(job_id)).result_file(level, fmt)
        if not path.is_file():
            raise JobError(404, "results_missing", "the result files of this job were removed")
        return path

    def list_jobs(self, offset: int, limit: int) -> tuple[int, list[JobView]]:
        """Jobs of this results folder, newest first (the web page's list): the total and one page."""
        records = []
        for entry in os.scandir(self.results_dir) if self.results_dir.is_dir() else []:
            if JOB_ID.match(entry.name) and (record := read_record(Path(entry.path))) is not None:
                records.append((str(record.get("created_at") or ""), entry.name))
        records.sort(reverse=True)
        views = []
        for _, job_id in records[offset : offset + limit]:
            try:
                views.append(self.get(job_id))
            except JobError as exc:
                if exc.status != 404:  # removed meanwhile: skip; Redis down: say so
                    raise
        return len(records), views

    def dicom_archive(self, job_id: str) -> Path:
        """A zip of a succeeded ``dicom_out`` job's SR and SC files and their index, made once."""
        view = self.get(job_id)
        if not view.dicom_out:
            raise JobError(404, "no_dicom_outputs", "this job was not asked for DICOM outputs (dicom_out)")
        index = self.result_file(job_id, "dicom", "csv")
        job_dir = self.job_dir(job_id)
        return dicom_outputs.archive(job_dir, index)

    def copy_results(self, job_id: str, out: Path) -> list[Path]:
        """Copy a succeeded job's result files into ``out`` (``squid batch`` with a broker)."""
        out.mkdir(parents=True, exist_ok=True)
        copied = []
        for level, fmt in (("instance", "csv"), ("instance", "jsonl"), ("study", "csv"), ("study", "jsonl")):
            source = self.result_file(job_id, level, fmt)  # type: ignore[arg-type]
            copied.append(Path(shutil.copy2(source, out / source.name)))
        if self.get(job_id).dicom_out:
            copied += dicom_outputs.copy_published(self.job_dir(job_id), out)
        return copied


@contextmanager
def results_storage() -> Iterator[None]:
    """A results folder that is full or cannot be written is a 503 with its reason, not a 500."""
    try:
        yield
    except OSError as exc:
        reason = storage_reason(exc)
        if reason is None:
            raise
        log.error("the results folder cannot be written (%s): no job accepted", describe(exc))
        raise JobError(
            503, reason, f"the service cannot write job results ({describe(exc)}); try again later"
        ) from None


def _view(data: dict[str, Any], progress: dict[str, Any]) -> JobView:
    done = sum(int(progress.get(name, 0) or 0) for name in COUNT_KEYS)
    counts = published_counts(progress)
    started, finished = parse_iso(data.get("started_at") or None), parse_iso(data.get("finished_at") or None)
    elapsed = None
    if started is not None:
        elapsed = max(0.0, ((finished or datetime.now(UTC)) - started).total_seconds())
    reason = data.get("error_reason") or ""
    threshold = data.get("threshold")
    return JobView(
        id=str(data["id"]),
        state=str(data["state"]),
        source=str(data.get("source", "")),
        label=str(data.get("label", "")),
        total=int(data.get("total") or 0),
        done=done,
        chunks=int(data.get("chunks") or 0),
        chunks_done=int(progress.get("chunks_done", 0) or 0),
        created_at=data.get("created_at") or None,
        started_at=data.get("started_at") or None,
        finished_at=data.get("finished_at") or None,
        elapsed_s=round(elapsed, 3) if elapsed is not None else None,
        files_per_s=round(done / elapsed, 3) if elapsed else None,
        model_version=data.get("model_version") or None,
        threshold=float(threshold) if threshold not in (None, "") else None,
        error={"reason": reason, "detail": str(data.get("error_detail", ""))} if reason else None,
        stage_ms_per_file={k: round(v / done, 3) for k, v in (progress.get("stage_ms") or {}).items()}
        if done
        else {},
        dicom_out=str(data.get("dicom_out", "")) == "1",
        chunks_redelivered=int(data.get("chunks_redelivered") or 0),
        events=parse_events(data.get("events")),
        failures={str(k): int(v) for k, v in (progress.get("failures") or {}).items()},
        **counts,
    )
