"""``squid batch`` and ``squid worker``: batch scoring in-process or on Celery workers."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from service.settings import Settings


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=code)


def _require_writable(out: Path) -> None:
    """Before any work: a job on the workers would otherwise fail only once it is done."""
    from service.jobs.storage import check_writable

    try:
        check_writable(out)
    except OSError as exc:
        raise _fail(_cannot_write(exc, out)) from None


def _cannot_write(exc: OSError, out: Path) -> str:
    from service.jobs.storage import describe

    return f"cannot write the results to {exc.filename or out}: {describe(exc)}"


def _failed(count: int, failures: Mapping[str, int]) -> str:
    """``failed 2 (kills_worker 1, undecodable 1)``: the reasons are how a user finds out what to fix."""
    reasons = ", ".join(f"{reason} {number}" for reason, number in sorted(failures.items()) if number)
    return f"failed {count}" + (f" ({reasons})" if reasons else "")


def batch(
    out: Annotated[Path, typer.Option(help="Folder for instances.csv, instances.jsonl, studies.csv.")],
    folder: Annotated[
        Path | None,
        typer.Argument(help="PACS export folder (DICOM with or without .dcm, DICOMDIR, PNG, JPEG)."),
    ] = None,
    chunk_size: Annotated[
        int | None, typer.Option(min=1, help="Files per chunk (default $SQUID_CHUNK_SIZE).")
    ] = None,
    in_process: Annotated[
        bool, typer.Option("--in-process", help="Score here even when SQUID_BROKER_URL is set.")
    ] = False,
    resume: Annotated[
        bool, typer.Option(help="Reuse scores of files already scored with this model.")
    ] = True,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    dicom_out: Annotated[
        bool,
        typer.Option(
            "--dicom-out",
            help="Also write a DICOM SR and secondary capture of each scored DICOM file into OUT/dicom/, "
            "listed in OUT/dicom_outputs.csv (scores every file: maps are not kept for resuming).",
        ),
    ] = False,
    dicomweb: Annotated[
        str | None,
        typer.Option(
            help="Pull studies from this DICOMweb URL instead of a folder (or $SQUID_DICOMWEB_URL)."
        ),
    ] = None,
    study: Annotated[list[str] | None, typer.Option(help="Study Instance UID to pull (repeatable).")] = None,
    since: Annotated[
        datetime | None, typer.Option(formats=["%Y-%m-%d"], help="Pull studies from this StudyDate on.")
    ] = None,
    until: Annotated[
        datetime | None, typer.Option(formats=["%Y-%m-%d"], help="Pull studies up to this StudyDate.")
    ] = None,
) -> None:
    """Score every chest X-ray under FOLDER, or studies pulled by DICOMweb: in-process without a broker,
    else on the workers."""
    from service.settings import get_settings

    settings = get_settings()
    if chunk_size:
        settings = settings.model_copy(update={"chunk_size": chunk_size})
    pulling = bool(dicomweb or study or since or until)
    if pulling:
        if folder is not None:
            raise _fail("give a FOLDER or --dicomweb/--study/--since/--until, not both")
        _require_writable(out)
        folder = _pull(settings, dicomweb, study or [], since, until, out)
    if folder is None:
        raise _fail("give a FOLDER, or --study/--since/--until with --dicomweb")
    if not folder.is_dir():
        raise _fail(f"not a folder: {folder}")
    _require_writable(out)
    if settings.broker_url and not in_process:
        _batch_on_workers(folder, out, settings, progress, dicom_out)
    else:
        _batch_in_process(folder, out, settings, resume, progress, dicom_out)


def _pull(
    settings: Settings,
    url: str | None,
    studies: list[str],
    since: datetime | None,
    until: datetime | None,
    out: Path,
) -> Path:
    """Pull the studies (named, or found by StudyDate with QIDO-RS) into ``OUT/.work/dicomweb``."""
    import shutil

    from service.node.dicomweb import find_studies, pull_study

    folder = out / ".work" / "dicomweb"
    shutil.rmtree(folder, ignore_errors=True)  # a pull is a snapshot: no instances of an earlier one
    folder.mkdir(parents=True)
    try:
        uids = list(studies)
        if since or until:
            uids += find_studies(
                settings, url, since.date() if since else None, until.date() if until else None
            )
        if not uids:
            raise _fail("no study to pull: give --study UID or a --since/--until range that matches", 1)
        count = sum(pull_study(settings, url, uid, folder) for uid in sorted(set(uids)))
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    except OSError as exc:  # requests' connection errors are OSErrors
        raise _fail(f"DICOMweb server unreachable: {type(exc).__name__}", 1) from exc
    typer.echo(f"pulled {count} instances of {len(set(uids))} studies", err=True)
    return folder


def _batch_in_process(
    folder: Path, out: Path, settings: Settings, resume: bool, progress: bool, dicom_out: bool
) -> None:
    from tqdm import tqdm

    from service.jobs.inprocess import run_inprocess
    from service.jobs.state import published_counts

    bar = tqdm(total=0, unit="file", disable=not progress, file=sys.stderr)

    def on_total(total: int) -> None:
        bar.total = total
        bar.refresh()

    def on_progress(files: int) -> None:
        bar.update(files)

    try:
        summary = run_inprocess(
            folder,
            out,
            settings,
            resume=resume,
            on_progress=on_progress,
            on_total=on_total,
            dicom_out=dicom_out,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    except OSError as exc:  # the results could not be written (the inputs' errors are rows)
        raise _fail(_cannot_write(exc, out), 1) from None
    finally:
        bar.close()
    if summary.published.missing:
        raise _fail(f"{len(summary.published.missing)} files have no result row", 1)
    counts = published_counts(summary.counts)
    typer.echo(
        f"{summary.total} files in {summary.seconds:.1f} s ({summary.files_per_s:.1f} files/s): "
        f"scored {counts['scored']} ({counts['resumed']} resumed), skipped {counts['skipped']}, "
        f"out of domain {counts['out_of_domain']}, {_failed(counts['failed'], summary.failures)}; "
        f"{summary.published.studies} studies; results in {out}"
        + (f"; {summary.dicom_objects} DICOM objects" if summary.dicom_objects is not None else "")
    )


def _batch_on_workers(folder: Path, out: Path, settings: Settings, progress: bool, dicom_out: bool) -> None:
    from tqdm import tqdm

    from service.jobs.manager import JobError, JobManager

    try:
        manager = JobManager(settings)
        view = manager.submit_folder(
            folder.resolve(), str(folder), check_import_root=False, dicom_out=dicom_out
        )
    except JobError as exc:
        raise _fail(f"{exc.reason}: {exc.detail}") from exc
    typer.echo(f"job {view.id} submitted to queue {settings.queue}", err=True)
    bar = tqdm(total=0, unit="file", disable=not progress, file=sys.stderr)
    try:
        while not view.finished:
            time.sleep(0.5)
            try:
                view = manager.get(view.id)
            except JobError as exc:
                if exc.status != 503:
                    raise
                bar.set_postfix_str("broker unreachable, retrying")
                continue
            if view.total and bar.total != view.total:
                bar.total = view.total
            bar.n = view.done
            bar.set_postfix_str(view.state)
            bar.refresh()
    except KeyboardInterrupt:
        bar.close()
        typer.echo(
            f"\njob {view.id} keeps running on the workers (DELETE /jobs/{view.id} cancels it)", err=True
        )
        raise typer.Exit(code=130) from None
    except JobError as exc:
        bar.close()
        raise _fail(f"{exc.reason}: {exc.detail}") from exc
    bar.close()
    if view.state != "succeeded":
        detail = f" ({view.error['reason']}: {view.error['detail']})" if view.error else ""
        raise _fail(f"job {view.id} {view.state}{detail}", 1)
    try:
        manager.copy_results(view.id, out)
    except OSError as exc:
        raise _fail(f"job {view.id} succeeded; {_cannot_write(exc, out)}", 1) from None
    typer.echo(
        f"{view.total} files in {view.elapsed_s or 0:.1f} s ({view.files_per_s or 0:.1f} files/s): "
        f"scored {view.scored} ({view.resumed} resumed), skipped {view.skipped}, "
        f"out of domain {view.out_of_domain}, {_failed(view.failed, view.failures)}; "
        f"job {view.id}; results in {out}"
        + (f"; {view.chunks_redelivered} chunks sent again (worker lost)" if view.chunks_redelivered else "")
    )


def worker(
    concurrency: Annotated[int, typer.Option(min=1, help="Pool processes (or threads).")] = 1,
    pool: Annotated[
        str, typer.Option(help="prefork (default), solo (one process, e.g. per GPU) or threads.")
    ] = "prefork",
    threads: Annotated[
        int | None, typer.Option(min=1, help="onnxruntime threads per process (default: cores / processes).")
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Prometheus port (default $SQUID_WORKER_METRICS_PORT)."),
    ] = None,
    queue: Annotated[str | None, typer.Option(help="Queue to consume (default $SQUID_QUEUE).")] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """Start a Celery batch worker (model loaded once per process, after the fork)."""
    from service.jobs.worker import POOLS, celery_argv, worker_environment
    from service.settings import get_settings

    settings = get_settings()
    if pool not in POOLS:
        raise _fail(f"--pool must be one of {', '.join(POOLS)}")
    if not settings.broker_url:
        raise _fail("SQUID_BROKER_URL is not set: a worker needs the Redis broker")
    env = worker_environment(
        dict(os.environ),
        queue=queue,
        concurrency=concurrency,
        pool=pool,
        threads=threads,
        metrics_port=metrics_port or settings.worker_metrics_port,
    )
    argv = celery_argv(queue or settings.queue, concurrency, pool, loglevel.upper())
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "service.jobs.worker", *argv], env)


def register(app: typer.Typer) -> None:
    """Add the batch commands to the ``squid`` app."""
    app.command()(batch)
    app.command()(worker)
