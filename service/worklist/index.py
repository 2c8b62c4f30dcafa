"""The worklist's index: one SQLite file per source (a job, the DICOM node) with a row per image and
a row per study, indexed for the page query (ranked by score, flagged first; filtered by label,
status and study date; paged on the server).

SQLite, not Redis: a job's index lives beside its results and outlives Redis' job state, the node's
beside its spool, and one page over 50,000 studies is a few milliseconds on an index
(``bench/worklist_query.py``). Several API processes may write one index: every write is one
``BEGIN IMMEDIATE`` transaction, readers use WAL and never block it.

Labels are a list (:data:`LABELS`, most urgent first): a study takes the first label any of its
scored images has, so a new verdict (``out_of_domain``) is one more entry and one mapping in
:func:`label_of`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from operator import attrgetter
from pathlib import Path
from typing import Any, Literal

from service.jobs.results import image_key
from service.jobs.rows import Row, Status

LABELS = ("anomalous", "normal")
FLAGGED_LABEL = "anomalous"
STATUSES = (  # a study's, in precedence
    Status.SCORED.value,
    Status.FAILED.value,
    Status.OUT_OF_DOMAIN.value,
    Status.SKIPPED.value,
)
SortKey = Literal["score", "study_date", "accession_number"]
SORT_COLUMNS: dict[str, tuple[str, ...]] = {
    "score": ("flagged", "score"),
    "study_date": ("study_date",),
    "accession_number": ("accession_number",),
}
SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    image_key TEXT PRIMARY KEY, study_key TEXT NOT NULL, chunk INTEGER, path TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL, series_instance_uid TEXT NOT NULL, sop_instance_uid TEXT NOT NULL,
    status TEXT NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL, score REAL, label TEXT NOT NULL,
    warnings TEXT NOT NULL, accession_number TEXT NOT NULL, study_date TEXT NOT NULL,
    patient_name TEXT NOT NULL, patient_id TEXT NOT NULL, received_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS images_study ON images (study_key);
CREATE INDEX IF NOT EXISTS images_chunk ON images (chunk);
CREATE TABLE IF NOT EXISTS studies (
    study_key TEXT PRIMARY KEY, study_instance_uid TEXT NOT NULL, accession_number TEXT NOT NULL,
    study_date TEXT NOT NULL, patient_name TEXT NOT NULL, patient_id TEXT NOT NULL,
    label TEXT NOT NULL, status TEXT NOT NULL, flagged INTEGER NOT NULL, score REAL,
    images INTEGER NOT NULL, scored INTEGER NOT NULL, reasons TEXT NOT NULL, warnings TEXT NOT NULL,
    top_image TEXT NOT NULL, received_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS studies_rank ON studies (flagged, score, study_key);
CREATE INDEX IF NOT EXISTS studies_date ON studies (study_date, study_key);
CREATE INDEX IF NOT EXISTS studies_accession ON studies (accession_number, study_key);
CREATE INDEX IF NOT EXISTS studies_label ON studies (label, flagged, score, study_key);
CREATE INDEX IF NOT EXISTS studies_status ON studies (status, flagged, score, study_key);
CREATE TABLE IF NOT EXISTS chunks (
    chunk INTEGER PRIMARY KEY, mtime_ns INTEGER NOT NULL, size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class IndexedImage:
    """One image's row: what the worklist and the study view show of it."""

    image_key: str
    study_key: str
    path: str
    status: str
    score: float | None = None
    label: str = ""
    reason: str = ""
    detail: str = ""
    warnings: str = ""  # comma-separated codes
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    sop_instance_uid: str = ""
    accession_number: str = ""
    study_date: str = ""
    patient_name: str = ""
    patient_id: str = ""
    received_at: str = ""
    chunk: int | None = None

    @classmethod
    def from_row(
        cls, row: Row, chunk: int | None = None, key: str | None = None, **extra: str
    ) -> IndexedImage:
        """A job's (or the node's) result row; ``key`` defaults to the hash of its path."""
        key = key or image_key(row.path)
        return cls(
            image_key=key,
            study_key=row.study_instance_uid or f"file:{key}",
            path=row.path,
            status=row.status,
            score=row.score,
            label=label_of(row),
            reason=row.reason,
            detail=row.detail,
            warnings=",".join(row.warnings),
            study_instance_uid=row.study_instance_uid,
            series_instance_uid=row.series_instance_uid,
            sop_instance_uid=row.sop_instance_uid,
            accession_number=row.accession_number,
            study_date=row.study_date,
            chunk=chunk,
        )


def label_of(row: Row) -> str:
    """The verdict of a scored row, one of :data:`LABELS`; empty when the row has no score."""
    if row.status != Status.SCORED or row.score is None:
        return ""
    return FLAGGED_LABEL if row.is_anomalous else "normal"


@dataclass(frozen=True)
class PageQuery:
    """A page of the worklist: filters (empty: any), sort and position."""

    labels: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    date_from: str = ""  # YYYYMMDD, inclusive
    date_to: str = ""
    sort: SortKey = "score"
    descending: bool = True
    offset: int = 0
    limit: int = 50


@dataclass(frozen=True)
class Page:
    total: int
    studies: list[dict[str, Any]]  # each with "source": the name given to :func:`query_page`


_IMAGE_COLUMNS = tuple(f.name for f in fields(IndexedImage))
_IMAGE_VALUES = attrgetter(*_IMAGE_COLUMNS)  # dataclasses.asdict deep-copies: 10x slower here
_LABEL_CASE = " ".join(f"WHEN sum(label = '{label}') > 0 THEN '{label}'" for label in LABELS)
_STATUS_CASE = " ".join(f"WHEN sum(status = '{status}') > 0 THEN '{status}'" for status in STATUSES)
_REFRESH = f"""
INSERT OR REPLACE INTO studies
SELECT study_key, max(study_instance_uid), max(accession_number), max(study_date), max(patient_name),
       max(patient_id), CASE {_LABEL_CASE} ELSE '' END AS label, CASE {_STATUS_CASE} ELSE '' END,
       sum(label = '{FLAGGED_LABEL}') > 0, max(score), count(*), sum(status = 'scored'),
       coalesce(group_concat(DISTINCT nullif(reason, '')), ''),
       coalesce(group_concat(DISTINCT nullif(warnings, '')), ''),
       (SELECT i.image_key FROM images AS i WHERE i.study_key = images.study_key
        ORDER BY i.score IS NULL, i.score DESC, i.path LIMIT 1),
       max(received_at)
FROM images WHERE study_key IN (SELECT value FROM json_each(?)) GROUP BY study_key
"""


class WorklistIndex:
    """One source's index file; open it per request (cheap) and close it."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        if readonly:
            self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, isolation_level=None)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(SCHEMA)
        self.db.row_factory = sqlite3.Row

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> WorklistIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: taken before reading what to write, so two writers never race."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def set_meta(db: sqlite3.Connection, key: str, value: str) -> None:
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    @staticmethod
    def chunks(db: sqlite3.Connection) -> dict[int, tuple[int, int]]:
        return {
            int(r[0]): (int(r[1]), int(r[2])) for r in db.execute("SELECT chunk, mtime_ns, size FROM chunks")
        }

    @staticmethod
    def replace_chunk(
        db: sqlite3.Connection, chunk: int, stamp: tuple[int, int], images: list[IndexedImage]
    ) -> set[str]:
        """Replace a chunk's images (a chunk written again replaces itself); the studies touched."""
        touched = {str(r[0]) for r in db.execute("SELECT study_key FROM images WHERE chunk = ?", (chunk,))}
        db.execute("DELETE FROM images WHERE chunk = ?", (chunk,))
        touched |= WorklistIndex.put_images(db, images)
        db.execute("INSERT OR REPLACE INTO chunks VALUES (?, ?, ?)", (chunk, *stamp))
        return touched

    @staticmethod
    def put_images(db: sqlite3.Connection, images: Iterable[IndexedImage]) -> set[str]:
        """Insert or replace images by key; the studies touched."""
        rows = [_IMAGE_VALUES(image) for image in images]
        marks = ", ".join("?" for _ in _IMAGE_COLUMNS)
        db.executemany(f"INSERT OR REPLACE INTO images ({', '.join(_IMAGE_COLUMNS)}) VALUES ({marks})", rows)
        return {str(row[1]) for row in rows}

    @staticmethod
    def refresh_studies(db: sqlite3.Connection, study_keys: set[str]) -> None:
        """Recompute the study rows of ``study_keys`` from their images (gone when none is left)."""
        keys = json.dumps(sorted(study_keys))
        db.execute("DELETE FROM studies WHERE study_key IN (SELECT value FROM json_each(?))", (keys,))
        db.execute(_REFRESH, (keys,))

    def study(self, study_key: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        row = self.db.execute("SELECT * FROM studies WHERE study_key = ?", (study_key,)).fetchone()
        if row is None:
            return None
        images = self.db.execute(
            "SELECT * FROM images WHERE study_key = ? ORDER BY score IS NULL, score DESC, path", (study_key,)
        ).fetchall()
        return dict(row), [dict(image) for image in images]

    def image(self, key: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM images WHERE image_key = ?", (key,)).fetchone()
        return None if row is None else dict(row)


def query_page(sources: dict[str, Path], query: PageQuery) -> Page:
    """One page over the studies of several indexes (``{"job": path, "node": path}``), merged.

    Each source is filtered and ordered on its own index; SQLite merges the ordered arms, so the
    cost grows with the page's position, not with the number of studies.
    """
    if not sources:
        return Page(0, [])
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.row_factory = sqlite3.Row
    try:
        for number, path in enumerate(sources.values()):
            db.execute(f"ATTACH DATABASE ? AS s{number}", (f"file:{path}?mode=ro",))
        where, params = _filters(query)
        arms = [f"SELECT ? AS source, * FROM s{number}.studies {where}" for number in range(len(sources))]
        arm_params: list[Any] = []
        for name in sources:
            arm_params += [name, *params]
        direction = "DESC" if query.descending else "ASC"
        order = ", ".join(f"{column} {direction}" for column in (*SORT_COLUMNS[query.sort], "study_key"))
        rows = db.execute(
            f"{' UNION ALL '.join(arms)} ORDER BY {order} LIMIT ? OFFSET ?",
            (*arm_params, query.limit, query.offset),
        ).fetchall()
        total = sum(
            int(db.execute(f"SELECT count(*) FROM s{number}.studies {where}", params).fetchone()[0])
            for number in range(len(sources))
        )
    finally:
        db.close()
    return Page(total, [dict(row) for row in rows])


def _filters(query: PageQuery) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, values in (("label", query.labels), ("status", query.statuses)):
        if values:
            clauses.append(f"{column} IN ({', '.join('?' for _ in values)})")
            params += list(values)
    if query.date_from:
        clauses.append("study_date >= ?")
        params.append(query.date_from)
    if query.date_to:
        clauses.append("study_date != '' AND study_date <= ?")
        params.append(query.date_to)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params
