"""Score a chunk so that a file that kills its worker fails alone, not with its whole chunk.

A chunk is scored as one batch. Before it starts, a delivery notes in Redis that the chunk is
running (``P:job:ID:isolation``, one JSON document per chunk index); the note is removed once the
chunk's rows are recorded. A delivery that finds the note still saying *running* knows the previous
one never finished: its process was killed (out of memory, a crash in a decoder, the hard task time
limit) or the task raised. Scoring the batch again would most likely die again on the same file, so
from then on the chunk is scored **one file at a time**, and each file's path is noted before it is
tried and its row saved after, so the work survives further losses:

* a lost delivery whose note names a file counts one loss against that file alone;
* the lost batch delivery counts one loss against every file of the chunk (any could have killed it);
* a file with ``max_deliveries`` losses is not tried again: it becomes a failed row, reason
  ``kills_worker``, and the chunk goes on with the next file;
* a delivery lost between files (writing the chunk file, say) counts against the chunk; after
  ``max_deliveries`` of those (the batch loss included) its remaining files become ``worker_lost``
  rows. Every delivery either finishes a file or adds a loss, so a chunk always ends.

A delivery that stops cleanly on a full or unwritable results folder marks the note *not running*
(:func:`stopped`): that is not a loss, and the task's storage retry takes over.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from model.runtime import SquidRuntime
from service.jobs.cache import ScoreCache
from service.jobs.rows import Reason, Row
from service.jobs.scoring import ChunkOutcome, score_entries
from service.jobs.state import JobState
from service.jobs.storage import storage_reason
from service.jobs.walker import FileEntry

log = logging.getLogger(__name__)

BATCH, ONE_BY_ONE = "batch", "one_by_one"

# Builds the DICOM result records of freshly scored files (None: the job has no DICOM outputs).
MakeRecords = Callable[[ChunkOutcome], list[dict[str, Any]]]
# Writes a scored chunk's rows and its DICOM records (None: no DICOM outputs).
WriteChunk = Callable[[ChunkOutcome, list[dict[str, Any]] | None], None]


@dataclass
class ChunkRun:
    """What Redis keeps of a chunk while it is being scored."""

    mode: str = BATCH
    running: bool = False
    current: str | None = None  # the file a one-by-one delivery is scoring
    batch_losses: int = 0
    between_losses: int = 0
    losses: dict[str, int] = field(default_factory=dict)  # lost one-by-one deliveries per file
    errors: dict[str, str] = field(default_factory=dict)  # what a file raised, when it raised
    outcome: dict[str, Any] | None = None  # ChunkOutcome.to_json of the files done one by one
    records: list[dict[str, Any]] = field(default_factory=list)  # their DICOM result records

    def note_lost_delivery(self) -> None:
        """The previous delivery never finished: count the loss where it belongs."""
        if self.mode == BATCH:
            self.batch_losses += 1
            self.mode = ONE_BY_ONE
        elif self.current is not None:
            self.losses[self.current] = self.losses.get(self.current, 0) + 1
        else:
            self.between_losses += 1
        self.current = None


class ChunkRuns:
    """The chunk notes of one job (field = chunk index)."""

    def __init__(self, state: JobState, job_id: str) -> None:
        self.client, self.key = state.client, state.key(job_id, ":isolation")

    def load(self, index: int) -> ChunkRun | None:
        raw = self.client.hget(self.key, str(index))
        return None if raw is None else ChunkRun(**json.loads(raw))

    def save(self, index: int, run: ChunkRun) -> None:
        self.client.hset(self.key, str(index), json.dumps(asdict(run)))

    def drop(self, index: int) -> None:
        self.client.hdel(self.key, str(index))


@dataclass(frozen=True)
class ChunkScoring:
    """Everything scoring one chunk needs besides its files."""

    runtime: SquidRuntime
    root: Path
    cache: ScoreCache
    max_pixels: int
    max_deliveries: int
    time_limit_s: int
    make_records: MakeRecords | None = None
    decode_threads: int = 0  # SQUID_DECODE_THREADS
    full_resolution: bool = False  # SQUID_DECODE_FULL_RESOLUTION


def score_chunk(
    runs: ChunkRuns, index: int, entries: list[FileEntry], how: ChunkScoring, write: WriteChunk
) -> ChunkOutcome:
    """Score the chunk, as one batch or one file at a time when an earlier delivery of it was lost,
    and ``write`` its rows and DICOM records (None without DICOM outputs). The caller records the
    chunk as finished, then :meth:`ChunkRuns.drop` s its note."""
    run = runs.load(index) or ChunkRun()
    if run.running:
        run.note_lost_delivery()
        log.warning("chunk %d: a delivery was lost; its files are now scored one at a time", index)
    run.running = True
    runs.save(index, run)
    with stopped_cleanly_on_storage_errors(runs, index, run):
        if run.mode == BATCH:
            outcome = _score(entries, how)
            records = how.make_records(outcome) if how.make_records else None
        else:
            outcome, records = _one_by_one(runs, index, run, entries, how)
        write(outcome, records)
    return outcome


@contextmanager
def stopped_cleanly_on_storage_errors(runs: ChunkRuns, index: int, run: ChunkRun) -> Iterator[None]:
    """A full or unwritable results folder is no loss: note the chunk as not running and re-raise."""
    try:
        yield
    except OSError as exc:
        if storage_reason(exc) is None:
            raise
        run.running, run.current = False, None
        runs.save(index, run)
        raise


def _score(entries: list[FileEntry], how: ChunkScoring) -> ChunkOutcome:
    with_map = how.make_records is not None
    return score_entries(
        how.runtime,
        how.root,
        entries,
        cache=how.cache,
        max_pixels=how.max_pixels,
        with_map=with_map,
        threads=how.decode_threads,
        full_resolution=how.full_resolution,
    )


def _one_by_one(
    runs: ChunkRuns, index: int, run: ChunkRun, entries: list[FileEntry], how: ChunkScoring
) -> tuple[ChunkOutcome, list[dict[str, Any]] | None]:
    outcome = ChunkOutcome.from_json(run.outcome) if run.outcome else ChunkOutcome(rows=[])
    done = {row.path for row in outcome.rows}
    version = how.runtime.metadata.model_version
    for entry in entries:
        if entry.path in done:
            continue
        losses = run.batch_losses + run.losses.get(entry.path, 0)
        if run.batch_losses + run.between_losses >= how.max_deliveries:
            detail = f"its chunk was lost {run.batch_losses + run.between_losses} times between files"
            outcome.add_row(Row.rejected(entry.path, Reason.WORKER_LOST, detail, version))
        elif losses >= how.max_deliveries:
            detail = _kills_worker_detail(
                losses, run.losses.get(entry.path, 0), run.errors.get(entry.path), how
            )
            outcome.add_row(Row.rejected(entry.path, Reason.KILLS_WORKER, detail, version))
            log.warning("chunk %d: a file stopped its worker %d times; failed as kills_worker", index, losses)
        else:
            run.current = entry.path
            runs.save(index, run)
            try:
                alone = _score([entry], how)
                if how.make_records:
                    run.records += how.make_records(alone)
            except Exception as exc:
                if storage_reason(exc) is None:  # the file's own doing: counted at the next delivery
                    run.errors[entry.path] = type(exc).__name__
                    runs.save(index, run)
                raise
            alone.results.clear()  # the maps were drawn into the records; keep memory flat
            outcome.add(alone)
            run.current = None
        run.outcome = outcome.to_json()
        runs.save(index, run)
    return outcome, run.records if how.make_records else None


def _kills_worker_detail(losses: int, alone: int, error: str | None, how: ChunkScoring) -> str:
    cause = (
        f"it raised {error}"
        if error
        else f"the process was killed (out of memory, a crash, or the {how.time_limit_s} s task time limit)"
    )
    return (
        f"scoring this file stopped its worker {losses} times, {alone} of them with the file alone: {cause}"
    )
