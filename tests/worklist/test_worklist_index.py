"""The worklist index on real SQLite, filled from real chunk files as workers write them."""

from __future__ import annotations

import os
from pathlib import Path

from service.jobs.results import ResultStore, image_key
from service.jobs.rows import Row
from service.worklist.index import LABELS, IndexedImage, PageQuery, WorklistIndex, query_page
from service.worklist.ingest import job_index_path, sync_job_index

T = 0.5


def scored(path: str, score: float, study: str = "", **extra: object) -> Row:
    return Row(
        path,
        "scored",
        "v1",
        study_instance_uid=study,
        score=score,
        is_anomalous=score >= T,
        threshold=T,
        **extra,
    )  # type: ignore[arg-type]


def keys(page: list[dict[str, object]]) -> list[object]:
    return [row["study_key"] for row in page]


def test_studies_rank_flagged_first_by_their_best_image(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.write_chunk(0, [scored("a/0", 0.2, "1.1"), scored("a/1", 0.7, "1.1"), scored("b/0", 0.4, "1.2")])
    store.write_chunk(
        1,
        [
            scored("c/0", 0.9, "1.3"),
            Row("d/0", "skipped", "v1", reason="lateral_view", study_instance_uid="1.4"),
        ],
    )
    page = query_page({"job": sync_job_index(tmp_path, finished=False)}, PageQuery())
    assert keys(page.studies) == ["1.3", "1.1", "1.2", "1.4"]
    assert page.total == 4
    first = page.studies[1]
    assert (first["images"], first["scored"], first["score"], first["label"]) == (2, 2, 0.7, "anomalous")
    assert first["top_image"] == image_key("a/1")  # the thumbnail is the image that ranks the study
    skipped = page.studies[3]
    assert (skipped["status"], skipped["label"], skipped["reasons"]) == ("skipped", "", "lateral_view")


def test_a_chunk_written_again_replaces_its_rows(tmp_path: Path) -> None:
    """A redelivered chunk rewrites its file: the index must follow, without duplicating a row."""
    store = ResultStore(tmp_path)
    store.write_chunk(0, [scored("a/0", 0.2, "1.1")])
    sync_job_index(tmp_path, finished=False)
    store.write_chunk(0, [scored("a/0", 0.8, "1.1")])
    os.utime(store.chunk_path(0), ns=(1, 1))  # a rewrite within the clock's resolution still differs
    page = query_page({"job": sync_job_index(tmp_path, finished=False)}, PageQuery())
    assert [(row["score"], row["images"]) for row in page.studies] == [(0.8, 1)]


def test_a_finished_job_is_not_scanned_again(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.write_chunk(0, [scored("a/0", 0.2, "1.1")])
    sync_job_index(tmp_path, finished=True)
    store.write_chunk(1, [scored("b/0", 0.9, "1.2")])  # cannot happen after the end; proves no rescan
    page = query_page({"job": sync_job_index(tmp_path, finished=True)}, PageQuery())
    assert keys(page.studies) == ["1.1"]


def test_filters_sorts_pages_and_merges_sources(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "job")
    rows = [
        scored(f"s{n}/0", n / 10, f"2.{n}", accession_number=f"A{9 - n}", study_date=f"2026120{n}")
        for n in range(1, 9)
    ]
    rows.append(Row("x.png", "failed", "v1", reason="undecodable"))
    store.write_chunk(0, rows)
    job = sync_job_index(tmp_path / "job", finished=True)
    node = tmp_path / "node.sqlite3"
    with WorklistIndex(node) as index, index.writing() as db:
        images = [IndexedImage.from_row(scored("n/0", 0.95, "3.1"), key="n0")]
        WorklistIndex.refresh_studies(db, WorklistIndex.put_images(db, images))
    both = {"job": job, "node": node}

    page = query_page(both, PageQuery(limit=3))
    assert [(r["source"], r["study_key"]) for r in page.studies] == [
        ("node", "3.1"),
        ("job", "2.8"),
        ("job", "2.7"),
    ]
    assert page.total == 10
    assert keys(query_page(both, PageQuery(limit=3, offset=3)).studies) == ["2.6", "2.5", "2.4"]
    assert keys(query_page({"job": job}, PageQuery(labels=("normal",))).studies) == [
        "2.4",
        "2.3",
        "2.2",
        "2.1",
    ]
    assert keys(query_page({"job": job}, PageQuery(statuses=("failed",))).studies) == [
        f"file:{image_key('x.png')}"
    ]
    dated = query_page({"job": job}, PageQuery(date_from="20261203", date_to="20261204", sort="study_date"))
    assert keys(dated.studies) == ["2.4", "2.3"]
    by_accession = query_page(
        {"job": job}, PageQuery(sort="accession_number", descending=False, statuses=("scored",))
    )
    assert keys(by_accession.studies)[:2] == ["2.8", "2.7"]  # A1, A2
    assert LABELS[0] == "anomalous"  # "flagged first" is the first label


def test_the_index_file_lives_beside_the_results(tmp_path: Path) -> None:
    ResultStore(tmp_path).write_chunk(0, [scored("a", 0.1)])
    assert sync_job_index(tmp_path, finished=False) == job_index_path(tmp_path)
    assert job_index_path(tmp_path).parent == tmp_path


def test_a_settled_folder_is_not_listed_until_a_chunk_lands(tmp_path: Path) -> None:
    """A running job's page does not list thousands of chunk files when none arrived since."""
    store = ResultStore(tmp_path)
    store.write_chunk(0, [scored("a/0", 0.2, "1.1")])
    sync_job_index(tmp_path, finished=False)
    os.utime(store.chunks, ns=(10**18, 10**18))  # long settled, and nothing new since
    sync_job_index(tmp_path, finished=False)
    with WorklistIndex(job_index_path(tmp_path), readonly=True) as index:
        assert index.meta("chunks_folder") == str(10**18)
    store.write_chunk(1, [scored("b/0", 0.9, "1.2")])  # lands by a rename: the folder's time moves
    page = query_page({"job": sync_job_index(tmp_path, finished=False)}, PageQuery())
    assert keys(page.studies) == ["1.2", "1.1"]
