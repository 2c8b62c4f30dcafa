"""A job's files on disk: manifest, one file per chunk, and the published result files.

Writes are idempotent by construction: chunk ``i`` always lands in ``.work/chunks/00000i.jsonl``,
replaced atomically, so a chunk that is retried or delivered twice overwrites itself and can never
duplicate or drop a row. Publishing merges the chunk files, checks that every file of the manifest
has exactly one row, and writes ``instances.csv``, ``instances.jsonl``, ``studies.csv`` and
``studies.jsonl`` (rows sorted by path, studies by UID), again atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from model.atomic import atomic_write_bytes
from service.jobs.rows import (
    INSTANCE_COLUMNS,
    STUDY_COLUMNS,
    Row,
    instance_record,
    study_records,
    to_csv,
    to_jsonl,
)
from service.jobs.walker import FileEntry

Level = Literal["instance", "study", "dicom"]
Format = Literal["csv", "jsonl"]
RESULT_FILES: dict[tuple[str, str], str] = {
    ("instance", "csv"): "instances.csv",
    ("instance", "jsonl"): "instances.jsonl",
    ("study", "csv"): "studies.csv",
    ("study", "jsonl"): "studies.jsonl",
    ("dicom", "csv"): "dicom_outputs.csv",  # jobs with dicom_out (service.jobs.dicom_outputs)
    ("dicom", "jsonl"): "dicom_outputs.jsonl",
}


def image_key(path: str) -> str:
    """A file's id in URLs and thumbnail archives: its job-relative path, hashed (paths may be long
    or carry names that do not belong in a URL)."""
    return hashlib.sha256(path.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` so readers see the old file or the whole new one, never a part."""
    atomic_write_bytes(path, text.encode("utf-8"))


@dataclass(frozen=True)
class Published:
    rows: int
    studies: int
    missing: list[str]
    duplicates: int


class ResultStore:
    """Files of one job under ``job_dir`` (working files under ``job_dir/.work``)."""

    def __init__(self, job_dir: Path) -> None:
        self.job_dir = job_dir
        self.work = job_dir / ".work"
        self.chunks = self.work / "chunks"
        self.manifest_path = self.work / "manifest.json"

    def write_manifest(self, root: Path, chunks: list[list[FileEntry]], extra: dict[str, Any]) -> None:
        body = {
            "root": str(root),
            "chunks": [[entry.to_wire() for entry in chunk] for chunk in chunks],
            **extra,
        }
        atomic_write(self.manifest_path, json.dumps(body))

    def read_manifest(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return data

    def manifest_chunks(self) -> list[list[FileEntry]]:
        manifest = self.read_manifest() or {"chunks": []}
        return [[FileEntry.from_wire(item) for item in chunk] for chunk in manifest["chunks"]]

    def chunk_path(self, index: int) -> Path:
        return self.chunks / f"{index:06d}.jsonl"

    def write_chunk(self, index: int, rows: list[Row]) -> None:
        atomic_write(self.chunk_path(index), "".join(json.dumps(row.to_json()) + "\n" for row in rows))

    def thumbnails_path(self, index: int) -> Path:
        return self.job_dir / "thumbs" / f"{index:06d}.zip"

    def write_thumbnails(self, index: int, thumbnails: dict[str, bytes]) -> None:
        """One archive per chunk (members named by :func:`image_key`), replaced like the chunk file:
        thousands of small files would cost more than the thumbnails themselves."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:  # PNGs are compressed already
            for path, png in thumbnails.items():
                archive.writestr(f"{image_key(path)}.png", png)
        self.thumbnails_path(index).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.thumbnails_path(index), buffer.getvalue())

    def thumbnail(self, index: int, key: str) -> bytes | None:
        try:
            with zipfile.ZipFile(self.thumbnails_path(index)) as archive:
                return archive.read(f"{key}.png")
        except (OSError, KeyError, zipfile.BadZipFile):
            return None

    def has_chunk(self, index: int) -> bool:
        return self.chunk_path(index).is_file()

    def read_chunk(self, index: int) -> list[Row]:
        lines = self.chunk_path(index).read_text(encoding="utf-8").splitlines()
        return [Row.from_json(json.loads(line)) for line in lines if line]

    def publish(self, expected: list[str]) -> Published:
        """Merge chunk files into the result files; nothing is written when a row is missing."""
        by_path: dict[str, Row] = {}
        duplicates = 0
        for chunk_file in sorted(self.chunks.glob("*.jsonl")):
            for line in chunk_file.read_text(encoding="utf-8").splitlines():
                if line:
                    row = Row.from_json(json.loads(line))
                    duplicates += row.path in by_path
                    by_path[row.path] = row
        missing = [path for path in expected if path not in by_path]
        if missing:
            return Published(len(by_path), 0, missing, duplicates)
        rows = [by_path[path] for path in sorted(set(expected))]
        instances = [instance_record(row) for row in rows]
        studies = study_records(rows)
        self.write_results(instances, studies)
        return Published(len(rows), len(studies), [], duplicates)

    def write_results(self, instances: list[dict[str, Any]], studies: list[dict[str, Any]]) -> None:
        atomic_write(self.job_dir / "instances.csv", to_csv(instances, INSTANCE_COLUMNS))
        atomic_write(self.job_dir / "instances.jsonl", to_jsonl(instances))
        atomic_write(self.job_dir / "studies.csv", to_csv(studies, STUDY_COLUMNS))
        atomic_write(self.job_dir / "studies.jsonl", to_jsonl(studies))

    def result_file(self, level: Level, fmt: Format) -> Path:
        return self.job_dir / RESULT_FILES[(level, fmt)]
