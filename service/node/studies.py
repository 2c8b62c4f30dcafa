"""Closed studies to results: score a spooled batch through the batch-job path, queue its SR and SC.

Scoring is the same code as ``squid batch FOLDER --dicom-out``: in this process when no broker is
set, on the Celery workers otherwise (the workers must see the spool folder). A batch leaves
``scoring/`` only after every result object is in every destination's outbox, so a crash while
scoring scores the batch again at restart; that re-run makes the same UIDs, so nothing duplicates.
The scorer's own copy of the objects is then deleted or kept (:mod:`service.node.kept`); an image
that got no SR/SC is counted by reason (``squid_node_results_not_built_total``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from model.runtime import SquidRuntime
from service.jobs import dicom_outputs
from service.node.kept import KeptResults
from service.node.metrics import NodeMetrics
from service.node.records import record_batch
from service.node.spool import Spool
from service.settings import Settings

log = logging.getLogger(__name__)

POLL_S = 0.5


class ScoringError(Exception):
    """The batch could not be scored now (broker down, job failed); it stays and is retried."""


@dataclass
class StudyScorer:
    """Scores one batch folder and returns its results folder (``instances.jsonl``, ``dicom/``)."""

    settings: Settings
    runtime: SquidRuntime | None  # None: on the workers

    def results_dir(self, batch: Path) -> Path:
        return (self.settings.results_dir / "node" / batch.name).resolve()

    def score(self, batch: Path) -> Path:
        if self.runtime is None:
            return self._on_workers(batch)
        from service.jobs.inprocess import run_inprocess

        out = self.results_dir(batch)
        summary = run_inprocess(
            batch, out, self.settings, runtime=self.runtime, resume=False, dicom_out=True, views=True
        )
        if summary.published.missing:
            raise ScoringError("some files have no result row")
        return out

    def _on_workers(self, batch: Path) -> Path:
        from service.jobs.manager import JobError, JobManager

        try:
            manager = JobManager(self.settings)
            view = manager.submit_folder(
                batch, "dicom node", check_import_root=False, dicom_out=True, views=True
            )
            while not view.finished:
                time.sleep(POLL_S)
                view = manager.get(view.id)
        except JobError as exc:
            raise ScoringError(exc.reason) from exc
        if view.state != "succeeded":
            raise ScoringError(f"job {view.id} {view.state}")
        return manager.job_dir(view.id)


def output_records(results: Path) -> list[dict[str, str]]:
    """The rows of a scored batch's ``dicom_outputs.jsonl``: one per object, or one with a reason."""
    index = results / dicom_outputs.JSONL_NAME
    if not index.exists():
        return []
    return [json.loads(line) for line in index.read_text(encoding="utf-8").splitlines() if line]


def image_outcomes(results: Path) -> dict[str, int]:
    """Counts of scored / skipped / out-of-domain / failed images of a scored batch (from
    ``instances.jsonl``). An out-of-domain image gets no SR or SC: the PACS hears nothing about it,
    the node logs and counts it."""
    counts = {"scored": 0, "skipped": 0, "out_of_domain": 0, "failed": 0}
    index = results / "instances.jsonl"
    if index.exists():
        for line in index.read_text(encoding="utf-8").splitlines():
            status = json.loads(line).get("status", "") if line else ""
            if status in counts:
                counts[status] += 1
    return counts


def process_batch(
    spool: Spool,
    scorer: StudyScorer,
    destinations: list[str],
    batch: Path,
    metrics: NodeMetrics,
    kept: KeptResults,
) -> int:
    """Score one batch, record it for the worklist and queue its results for every destination;
    returns the objects queued."""
    results = scorer.score(batch)
    settings = scorer.settings
    try:
        record_batch(settings.node_state, batch, results, settings.worklist_patient_identifiers)
    except Exception as exc:  # the worklist misses the study; the PACS still gets its results
        log.error("recording a study for the worklist failed: %s", type(exc).__name__)
    records = output_records(results)
    files = [results / record["file"] for record in records if record.get("kind")]
    for destination in destinations:
        for path in files:
            spool.queue_result(destination, path)
    kept.hand_over(batch.name, files, delivered=bool(destinations))
    outcomes = image_outcomes(results)
    for outcome, count in outcomes.items():
        metrics.images.labels(outcome).inc(count)
    for record in records:
        if not record.get("kind"):  # the scorer logged why
            metrics.not_built.labels(record.get("reason") or "unknown").inc()
    spool.finish_batch(batch)
    metrics.studies.labels("scored").inc()
    log.info(
        "study scored",
        extra={"objects": len(files), "destinations": len(destinations), "images": outcomes},
    )
    if outcomes["out_of_domain"]:  # no result object says "normal" (or anything) for these
        log.warning(
            "%d images not assessed: outside the model's domain (see instances.jsonl)",
            outcomes["out_of_domain"],
        )
    return len(files)
