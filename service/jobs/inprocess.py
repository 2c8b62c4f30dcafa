"""Run a whole job in this process: the embedded default of ``squid batch`` when no broker is set.

Same walker, same chunks, same scoring function and same result writer as the workers, so both
paths produce identical result files for the same folder. Resuming uses a local score cache in
``OUT/.work/cache.sqlite3``: running again into the same output folder does not rescore files
already scored with the same model.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from model.runtime import SquidRuntime, open_runtime
from service.jobs import dicom_outputs
from service.jobs.cache import NullCache, ScoreCache, SqliteScoreCache
from service.jobs.chunking import make_chunks
from service.jobs.results import Published, ResultStore
from service.jobs.scoring import STAGES, model_namespace, score_entries
from service.jobs.walker import walk
from service.settings import Settings
from service.worklist.views import write_views


@dataclass
class BatchSummary:
    """Counts, the published result and per-stage time totals (ms) of an in-process run."""

    total: int
    counts: Counter[str]
    published: Published
    seconds: float
    timing_ms: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    walk_seconds: float = 0.0
    dicom_objects: int | None = None  # with dicom_out: SR and SC files written
    failures: Counter[str] = field(default_factory=Counter)  # failed files by reason

    @property
    def files_per_s(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else 0.0


def run_inprocess(
    folder: Path,
    out: Path,
    settings: Settings,
    *,
    runtime: SquidRuntime | None = None,
    resume: bool = True,
    on_progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    dicom_out: bool = False,
    views: bool = False,
) -> BatchSummary:
    """Score every file under ``folder`` into ``out``; ``on_progress(n)`` after each chunk of n files.

    ``dicom_out`` also writes the SR and SC of every DICOM file (:mod:`service.jobs.dicom_outputs`);
    the objects need each file's anomaly map, which the resume cache does not keep, so it scores
    every file again. ``views`` keeps each scored image's viewer pictures (:mod:`service.worklist.views`).
    """
    rt = runtime or open_runtime(settings)
    started = time.perf_counter()  # model loading is not part of the job's time
    root = folder.resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"not a folder: {folder}")
    entries = walk(root)
    walked = time.perf_counter()
    if on_total:
        on_total(len(entries))
    chunks = make_chunks(entries, settings.chunk_size)
    store = ResultStore(out)
    shutil.rmtree(store.chunks, ignore_errors=True)  # rows of an earlier run are not this run's rows
    store.write_manifest(root, chunks, {"chunk_size": settings.chunk_size})
    if dicom_out:
        dicom_outputs.reset(out)
    cache: ScoreCache = (
        SqliteScoreCache(store.work / "cache.sqlite3", model_namespace(rt))
        if resume and not dicom_out
        else NullCache()
    )
    counts: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    timing = dict.fromkeys(STAGES, 0.0)
    try:
        for index, chunk in enumerate(chunks):
            outcome = score_entries(
                rt,
                root,
                chunk,
                cache=cache,
                max_pixels=settings.max_pixels,
                with_map=dicom_out,
                threads=settings.decode_threads,
                full_resolution=settings.decode_full_resolution,
            )
            write_started = time.perf_counter()
            if dicom_out:
                made = dicom_outputs.records(rt, root, outcome.results, out, settings.max_pixels)
                dicom_outputs.write_chunk(out, index, made)
            if views:
                write_views(rt, root, outcome.rows, out, settings.max_pixels)
            store.write_thumbnails(index, outcome.thumbnails)
            store.write_chunk(index, outcome.rows)
            outcome.timing_ms["write"] = (time.perf_counter() - write_started) * 1e3
            counts.update(outcome.summary())
            failures.update(outcome.failures())
            for stage in STAGES:
                timing[stage] += outcome.timing_ms.get(stage, 0.0)
            if on_progress:
                on_progress(len(chunk))
    finally:
        if isinstance(cache, SqliteScoreCache):
            cache.close()
    publish_started = time.perf_counter()
    published = store.publish([entry.path for entry in entries])
    objects = dicom_outputs.publish(out) if dicom_out and not published.missing else None
    timing["write"] += (time.perf_counter() - publish_started) * 1e3
    return BatchSummary(
        total=len(entries),
        counts=counts,
        published=published,
        seconds=time.perf_counter() - started,
        timing_ms=timing,
        walk_seconds=walked - started,
        dicom_objects=objects,
        failures=failures,
    )
