"""The worklist's page query over a job of 50,000 studies (and a DICOM node's 5,000), on its index.

Usage: python bench/worklist_query.py [--studies 50000] [--node 5000] [--repeat 30]
                                      [--out bench/results/worklist_query.json]

Writes a job's chunk files the way workers do (32 rows a chunk, one image per study plus some
studies of several images, 10 % skipped or failed), builds the index from them as the API does on
the first page, or the finalizing worker at the end (``sync_job_index``), times the check each page
request makes on a running and on a finished job, then times queries with the API's own function
(``query_page``): the first page, a page deep in the list, each filter, each sort, and the job and
the node merged; ``GET /worklist`` through the app; and what scoring a file now also does for the
worklist (thumbnail, accession and date), next to its decode. Medians (and p95) over ``--repeat`` runs of
each, in one process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.jobs.results import ResultStore  # noqa: E402
from service.jobs.rows import Row  # noqa: E402
from service.worklist.index import IndexedImage, PageQuery, WorklistIndex, query_page  # noqa: E402
from service.worklist.ingest import sync_job_index  # noqa: E402

THRESHOLD = 0.88


def make_rows(count: int, rng: random.Random, prefix: str) -> list[Row]:
    rows = []
    study = 0
    while len(rows) < count:
        study += 1
        uid = f"1.2.826.0.1.{prefix}.{study}"
        date = f"2026{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        for image in range(rng.choice((1, 1, 1, 2, 3))):
            path = f"{prefix}/{study:06d}/{image}.dcm"
            common = {
                "study_instance_uid": uid,
                "sop_instance_uid": f"{uid}.{image}",
                "accession_number": f"A{study:07d}",
                "study_date": date,
            }
            roll = rng.random()
            if roll < 0.05:
                rows.append(Row(path, "skipped", "bench", reason="lateral_view", **common))
            elif roll < 0.10:
                rows.append(Row(path, "failed", "bench", reason="undecodable", **common))
            else:
                score = rng.random()
                rows.append(
                    Row(
                        path,
                        "scored",
                        "bench",
                        score=score,
                        is_anomalous=score >= THRESHOLD,
                        threshold=THRESHOLD,
                        **common,
                    )
                )
    return rows[:count]


def timed(fn: Callable[[], object], repeat: int) -> dict[str, float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    return {
        "median_ms": round(statistics.median(samples), 3),
        "p95_ms": round(samples[min(len(samples) - 1, int(0.95 * len(samples)))], 3),
    }


def http_pages(index: Path, state_dir: Path, repeat: int) -> dict[str, dict[str, float]]:
    """``GET /worklist`` through the FastAPI app (validation, SQL, response model, JSON), with the
    50,000-row index as the node's (no broker needed); the app's model is not loaded for it."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.node.records import node_index_path
    from service.settings import Settings

    state_dir.mkdir()
    shutil.copy(index, node_index_path(state_dir))
    client = TestClient(create_app(Settings(node_state_dir=state_dir)))

    def get(params: str) -> None:
        response = client.get(f"/worklist?{params}")
        assert response.status_code == 200, response.text

    return {
        "first page of 50": timed(lambda: get("limit=50"), repeat),
        "label=anomalous, page 100 of 50": timed(lambda: get("label=anomalous&offset=5000&limit=50"), repeat),
    }


def per_file_cost(repeat: int) -> dict[str, dict[str, float]]:
    """What scoring a file now also does for the worklist (a 96 px thumbnail of the decoded pixels and
    a header read of the accession number and study date), beside the decode and preprocessing it
    follows (``model.steps.prepare`` as the jobs call it: decoded at the model's resolution)."""
    import numpy as np

    from model.imaging.headers import peek_study
    from model.runtime import SquidRuntime
    from model.steps import prepare
    from service.jobs.scoring import THUMBNAIL_SIDE
    from service.payload import thumbnail_png
    from tests.dicom_factory import make_dicom

    preprocessing = SquidRuntime(intra_op_threads=1).preprocessing
    costs = {}
    for side in (224, 2048):
        ramp = (np.add.outer(np.arange(side), np.arange(side)) % 4096).astype(np.uint16)
        data = make_dicom(ramp, bits_stored=12, extra={"AccessionNumber": "A1", "StudyDate": "20261207"})
        pixels = prepare(data, preprocessing, 100_000_000).decoded.pixels
        costs[f"{side} px"] = {
            "prepare_ms": timed(lambda d=data: prepare(d, preprocessing, 100_000_000), repeat)["median_ms"],
            "thumbnail_ms": timed(lambda p=pixels: thumbnail_png(p, THUMBNAIL_SIDE), repeat)["median_ms"],
            "study_header_ms": timed(lambda d=data: peek_study(d), repeat)["median_ms"],
        }
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=50_000, help="rows of the job (images)")
    parser.add_argument("--node", type=int, default=5_000, help="images of the node's index")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "worklist_query.json")
    args = parser.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        job_dir = Path(tmp) / "job"
        store = ResultStore(job_dir)
        rows = make_rows(args.studies, rng, "job")
        for index in range(0, len(rows), 32):
            store.write_chunk(index // 32, rows[index : index + 32])
        start = time.perf_counter()
        job_index = sync_job_index(job_dir, finished=False)  # every chunk new: the whole build
        build_s = time.perf_counter() - start
        os.utime(store.chunks, ns=(1, 1))  # the folder settled: no chunk landed for a while
        sync_job_index(job_dir, finished=False)
        running = timed(lambda: sync_job_index(job_dir, finished=False), args.repeat)
        sync_job_index(job_dir, finished=True)  # what the finalizing worker does at the end
        finished = timed(lambda: sync_job_index(job_dir, finished=True), args.repeat)
        node_path = Path(tmp) / "node.sqlite3"
        with WorklistIndex(node_path) as node, node.writing() as db:
            images = [IndexedImage.from_row(row) for row in make_rows(args.node, rng, "node")]
            WorklistIndex.refresh_studies(db, WorklistIndex.put_images(db, images))
        with WorklistIndex(job_index, readonly=True) as index:
            studies = int(index.db.execute("SELECT count(*) FROM studies").fetchone()[0])
        job = {"job": job_index}
        both = {"job": job_index, "node": node_path}
        cases: dict[str, tuple[dict[str, Path], PageQuery]] = {
            "first page (score, flagged first)": (job, PageQuery()),
            "page at offset 25,000": (job, PageQuery(offset=25_000)),
            "last page": (job, PageQuery(offset=max(0, studies - 50))),
            "label = anomalous": (job, PageQuery(labels=("anomalous",))),
            "status = failed": (job, PageQuery(statuses=("failed",))),
            "study date in March": (job, PageQuery(date_from="20260301", date_to="20260331")),
            "sorted by study date": (job, PageQuery(sort="study_date")),
            "sorted by accession, ascending": (job, PageQuery(sort="accession_number", descending=False)),
            "job + node merged, first page": (both, PageQuery()),
            "job + node merged, label = normal, offset 10,000": (
                both,
                PageQuery(labels=("normal",), offset=10_000),
            ),
        }
        results = {
            name: timed(lambda s=s, q=q: query_page(s, q), args.repeat) for name, (s, q) in cases.items()
        }
        http = http_pages(job_index, Path(tmp) / "state", args.repeat)
    report = {
        "bench": "worklist_query",
        "machine": platform.machine(),
        "python": platform.python_version(),
        "images": args.studies,
        "studies": studies,
        "node_images": args.node,
        "page_size": 50,
        "repeat": args.repeat,
        "index_build_s": round(build_s, 3),
        "sync_running_job_no_new_chunk": running,
        "sync_finished_job": finished,
        "queries": results,
        "http_get_worklist": http,
        "per_file_cost_in_scoring": per_file_cost(min(args.repeat, 15)),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
