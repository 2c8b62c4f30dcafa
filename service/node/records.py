"""The node's record of the studies it scored, for the worklist (the API reads it; the node writes).

Under ``SQUID_NODE_STATE_DIR`` (default ``<spool>/worklist``), a folder the node and the API both
mount:

``worklist.sqlite3``            the index (:mod:`service.worklist.index`): a row per image and study
``views/<image key>/``          film, map layer, input and reconstruction PNGs, ``view.json``, ``thumb.png``

The spooled sources are deleted once a study is scored, so what the viewer shows is kept here, drawn
by the scoring job itself (``views``). An image's key is the hash of its Study and SOP Instance UIDs:
a study sent again replaces its images instead of adding copies. Patient name and ID are recorded
only with ``SQUID_WORKLIST_PATIENT_IDENTIFIERS`` on.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from model.imaging.headers import peek_patient
from service.jobs.results import ResultStore, image_key
from service.jobs.rows import Row
from service.jobs.state import now_iso
from service.worklist.index import IndexedImage, WorklistIndex
from service.worklist.views import VIEWS_FOLDER

INDEX_NAME = "worklist.sqlite3"
THUMBNAIL_NAME = "thumb.png"


def node_index_path(state_dir: Path) -> Path:
    return state_dir / INDEX_NAME


def node_view_folder(state_dir: Path, key: str) -> Path:
    return state_dir / VIEWS_FOLDER / key


def node_image_key(row: Row, batch: Path) -> str:
    if row.study_instance_uid and row.sop_instance_uid:
        return image_key(f"{row.study_instance_uid}/{row.sop_instance_uid}")
    return image_key(f"{batch.name}/{row.path}")


def record_batch(state_dir: Path, batch: Path, results: Path, patient_identifiers: bool = False) -> int:
    """Add a scored batch (its sources in ``batch``, its job files in ``results``) to the record."""
    store = ResultStore(results)
    received = now_iso()
    images: list[IndexedImage] = []
    for chunk in range(len(store.manifest_chunks())):
        for row in store.read_chunk(chunk):
            key = node_image_key(row, batch)
            _keep_pictures(store, chunk, row, state_dir / VIEWS_FOLDER / key)
            name, patient_id = _patient(batch / row.path) if patient_identifiers else ("", "")
            image = IndexedImage.from_row(row, key=key)
            images.append(replace(image, received_at=received, patient_name=name, patient_id=patient_id))
    with WorklistIndex(node_index_path(state_dir)) as index, index.writing() as db:
        WorklistIndex.refresh_studies(db, WorklistIndex.put_images(db, images))
    return len(images)


def _keep_pictures(store: ResultStore, chunk: int, row: Row, target: Path) -> None:
    source = store.job_dir / VIEWS_FOLDER / image_key(row.path)
    if source.is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True)
    thumbnail = store.thumbnail(chunk, image_key(row.path))
    if thumbnail is not None:
        target.mkdir(parents=True, exist_ok=True)
        (target / THUMBNAIL_NAME).write_bytes(thumbnail)


def _patient(path: Path) -> tuple[str, str]:
    return peek_patient(path)  # an unreadable file gives empty values
