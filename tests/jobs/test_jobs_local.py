"""Batch jobs without servers: walker, rows, idempotent result writes, zip safety, path confinement,
and the in-process ``squid batch`` path over the PACS-like tree (every row, every reason, resume)."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import zipfile
from pathlib import Path

import pytest

from service.jobs.archive import ArchiveError, check_archive, extract_archive
from service.jobs.inprocess import run_inprocess
from service.jobs.manager import JobError, resolve_job_path
from service.jobs.results import ResultStore
from service.jobs.rows import Reason, Row, Status, status_for
from service.jobs.walker import walk
from service.settings import Settings
from tests.jobs.jobs_support import run_cli
from tests.jobs.limits_support import read_only_folder
from tests.jobs.pacs_tree import SENTINELS, Expected, check_rows_against, read_instances


def test_reason_classes_cover_every_image_reason() -> None:
    from model.imaging import Reason as ImageReason

    assert {code.value for code in ImageReason} <= {code.value for code in Reason}
    skipped = {"unsupported_format", "no_pixel_data", "dicomdir", "outside_root"}
    for code in Reason:
        expected = Status.SKIPPED if code.value in skipped else Status.FAILED
        if code.value == "out_of_domain":
            expected = Status.OUT_OF_DOMAIN
        assert status_for(code) == expected, code


def test_walker_uses_dicomdir_order_and_never_leaves_the_root(pacs_source: tuple[Path, Expected]) -> None:
    root, expected = pacs_source
    entries = walk(root)
    paths = [entry.path for entry in entries]
    assert set(paths) == set(expected.outcome)
    referenced = [p for p in paths if p.startswith("export/") and p != "export/DICOMDIR"]
    assert paths[: len(referenced)] == referenced, "DICOMDIR references come first"
    presets = {entry.path: entry.preset for entry in entries if entry.preset}
    assert presets == {
        "export/DICOMDIR": "dicomdir",
        "export/PT000000/ST000000/SE000000/IM000004": "missing_file",
        "junk/link_out.dcm": "outside_root",
    }


def test_chunk_writes_are_idempotent(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    rows = [Row(f"a/{i}", "skipped", "v1", reason="unsupported_format") for i in range(3)]
    store.write_chunk(0, rows)
    store.write_chunk(0, rows)  # a retried chunk
    store.write_chunk(1, [Row("b/0", "failed", "v1", reason="undecodable")])
    published = store.publish(["a/0", "a/1", "a/2", "b/0"])
    assert published.missing == [] and published.rows == 4 and published.duplicates == 0
    lines = (tmp_path / "instances.jsonl").read_text().splitlines()
    assert [json.loads(line)["path"] for line in lines] == ["a/0", "a/1", "a/2", "b/0"]
    missing = ResultStore(tmp_path).publish(["a/0", "c/0"])
    assert missing.missing == ["c/0"]


def _zip(members: dict[str, bytes], symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "members, symlink",
    [
        ({"../evil.dcm": b"x"}, None),
        ({"a/../../evil.dcm": b"x"}, None),
        ({"/abs/evil.dcm": b"x"}, None),
        ({"C:\\evil.dcm": b"x"}, None),
        ({"ok.dcm": b"x"}, "link.dcm"),
    ],
)
def test_unsafe_archives_are_refused_whole(
    tmp_path: Path, members: dict[str, bytes], symlink: str | None
) -> None:
    path = tmp_path / "upload.zip"
    path.write_bytes(_zip(members, symlink))
    with pytest.raises(ArchiveError) as caught:
        extract_archive(path, tmp_path / "out", 1 << 20)
    assert caught.value.reason == "unsafe_archive" and caught.value.status == 400
    assert not (tmp_path / "evil.dcm").exists() and not (tmp_path / "out" / "link.dcm").exists()


def test_zip_bombs_and_junk_are_refused(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("big.dcm", bytes(4 << 20))
    with pytest.raises(ArchiveError) as caught:
        check_archive(bomb, 1 << 20)
    assert (caught.value.reason, caught.value.status) == ("too_large", 413)
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(ArchiveError) as caught:
        check_archive(junk, 1 << 20)
    assert (caught.value.reason, caught.value.status) == ("invalid_archive", 415)
    good = tmp_path / "good.zip"
    good.write_bytes(_zip({"p/s/1.dcm": b"a", "p/s/2": b"b"}))
    assert extract_archive(good, tmp_path / "x", 1 << 20) == 2
    assert (tmp_path / "x" / "p" / "s" / "2").read_bytes() == b"b"


def test_job_paths_stay_inside_the_import_root(tmp_path: Path) -> None:
    root = tmp_path / "import"
    (root / "site" / "night1").mkdir(parents=True)
    (root / "site" / "file.dcm").write_bytes(b"x")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.symlink(outside, root / "site" / "escape")
    os.symlink(root / "site" / "night1", root / "inner_link")
    assert resolve_job_path("site/night1", root) == (root / "site" / "night1").resolve()
    assert resolve_job_path(str(root / "site" / "night1"), root) == (root / "site" / "night1").resolve()
    assert resolve_job_path("inner_link", root) == (root / "site" / "night1").resolve()
    for raw, status, reason in [
        ("../elsewhere", 403, "path_forbidden"),
        ("site/../../elsewhere", 403, "path_forbidden"),
        (str(outside), 403, "path_forbidden"),
        ("site/escape", 403, "path_forbidden"),
        ("/etc", 403, "path_forbidden"),
        ("site/nope", 404, "path_not_found"),
        ("site/file.dcm", 422, "not_a_directory"),
    ]:
        with pytest.raises(JobError) as caught:
            resolve_job_path(raw, root)
        assert (caught.value.status, caught.value.reason) == (status, reason), raw
    with pytest.raises(JobError) as caught:
        resolve_job_path("site", None)
    assert caught.value.status == 403


def test_in_process_batch_scores_every_file_and_resumes(
    pacs_source: tuple[Path, Expected], tmp_path: Path
) -> None:
    root, expected = pacs_source
    settings = Settings(chunk_size=4)
    first = run_inprocess(root, tmp_path / "out", settings)
    rows = read_instances(tmp_path / "out")
    check_rows_against(rows, expected)
    scored = sum(1 for outcome in expected.outcome.values() if outcome[0] == "scored")
    assert first.counts["scored"] == scored and first.counts["resumed"] == 0
    body = b"".join((tmp_path / "out" / name).read_bytes() for name in ("instances.csv", "studies.csv"))
    assert not any(sentinel.encode() in body for sentinel in SENTINELS)

    again = run_inprocess(root, tmp_path / "out", settings)
    assert again.counts["resumed"] == scored and again.counts["scored"] == 0
    assert read_instances(tmp_path / "out") == rows, "a resumed run publishes the same rows"


def test_squid_batch_cli_without_broker(pacs_source: tuple[Path, Expected], tmp_path: Path) -> None:
    root, expected = pacs_source
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQUID_")}
    result = run_cli(env, "batch", str(root), "--out", str(tmp_path / "out"), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "studies; results in" in result.stdout
    check_rows_against(read_instances(tmp_path / "out"), expected)
    studies = list(csv.DictReader((tmp_path / "out" / "studies.csv").open(encoding="utf-8")))
    assert set(studies[0]) == {
        "study_instance_uid",
        "images",
        "scored",
        "max_score",
        "flagged",
        "threshold",
        "model_version",
    }
    assert {row["study_instance_uid"] for row in studies} == set(expected.study.values())
    scored = sum(1 for outcome in expected.outcome.values() if outcome[0] == "scored")
    assert f"scored {scored} (0 resumed)" in result.stdout
    refused = sum(1 for outcome in expected.outcome.values() if outcome[0] == "out_of_domain")
    assert refused == 4 and f"out of domain {refused}," in result.stdout
    assert f"{expected.failed_summary()};" in result.stdout, "the user sees why files failed"
    again = run_cli(env, "batch", str(root), "--out", str(tmp_path / "out"), "--no-progress")
    assert again.returncode == 0, again.stderr
    assert f"scored {scored} ({scored} resumed)" in again.stdout, "users see resumed files as scored"


@pytest.mark.parametrize("where", ["out", "inside"])
def test_squid_batch_into_a_read_only_folder_is_a_one_line_error(
    pacs_source: tuple[Path, Expected], tmp_path: Path, where: str
) -> None:
    """``--out`` a read-only folder, or a folder to create inside one: ``error:``, no traceback."""
    root, _ = pacs_source
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQUID_")}
    with read_only_folder(tmp_path / "read-only") as folder:
        out = folder if where == "out" else folder / "results"
        result = run_cli(env, "batch", str(root), "--out", str(out), "--no-progress")
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Read-only file system" in lines[0] or "Permission denied" in lines[0], lines


def test_images_over_the_pixel_limit_fail_without_failing_the_job(
    pacs_source: tuple[Path, Expected], tmp_path: Path
) -> None:
    root, expected = pacs_source
    run_inprocess(root, tmp_path / "out", Settings(chunk_size=8, max_pixels=1000), resume=False)
    rows = {row["path"]: row for row in read_instances(tmp_path / "out")}
    assert set(rows) == set(expected.outcome)
    for path, (status, _) in expected.outcome.items():
        if status == "scored":
            assert (rows[path]["status"], rows[path]["reason"]) == ("failed", "image_too_large"), path
        else:
            assert rows[path]["status"] == status, path


def test_an_empty_folder_gives_empty_result_files(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    summary = run_inprocess(tmp_path / "empty", tmp_path / "out", Settings())
    assert summary.total == 0 and summary.published.missing == []
    assert read_instances(tmp_path / "out") == []
    assert (tmp_path / "out" / "studies.csv").read_text().startswith("study_instance_uid,")


def test_batch_side_never_imports_torch_or_training() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import service.jobs.tasks, service.jobs.worker, service.jobs.inprocess, service.api.jobs, cli.jobs\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.split('.')[0] == 'training']\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "SQUID_BROKER_URL": "redis://127.0.0.1:1/0"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_in_process_dicom_out_writes_objects_and_reasons_and_replaces_them(tmp_path: Path) -> None:
    from dicom_factory import make_dicom
    from pydicom import dcmread

    from model.dicom_results import Skip
    from tests.service.http_support import REPO_ROOT, chest_like

    folder = tmp_path / "in"
    folder.mkdir()
    sample = REPO_ROOT / "samples" / "normal-IM-0372-0001-MONOCHROME1.dcm"
    (folder / "sample.dcm").write_bytes(sample.read_bytes())
    (folder / "sample.jpeg").write_bytes((REPO_ROOT / "samples" / "normal-IM-0372-0001.jpeg").read_bytes())
    (folder / "nostudy.dcm").write_bytes(make_dicom(chest_like(), extra={"StudyInstanceUID": ""}))
    out = tmp_path / "out"
    settings = Settings(chunk_size=2)
    first = run_inprocess(folder, out, settings, dicom_out=True)
    assert first.counts["scored"] == 3 and first.dicom_objects == 2
    index = (out / "dicom_outputs.csv").read_text()
    rows = list(csv.DictReader(io.StringIO(index)))
    assert [(row["path"], row["kind"], row["reason"]) for row in rows] == [
        ("nostudy.dcm", "", Skip.MISSING_UIDS),
        ("sample.dcm", "sc", ""),
        ("sample.dcm", "sr", ""),
    ]
    source_uid = str(dcmread(sample, stop_before_pixels=True).SOPInstanceUID)
    for row in rows[1:]:
        assert row["source_sop_instance_uid"] == source_uid
        assert dcmread(out / row["file"]).SOPInstanceUID == row["sop_instance_uid"]
    objects = sorted((out / "dicom").iterdir())
    again = run_inprocess(folder, out, settings, dicom_out=True)
    assert again.counts["resumed"] == 0, "DICOM results need the maps: every file is scored again"
    assert (out / "dicom_outputs.csv").read_text() == index and sorted((out / "dicom").iterdir()) == objects
