"""DICOM result objects: an SR and a secondary capture that dciodvfy accepts and that say what was scored."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from dicom_factory import make_dicom
from dicom_results_support import dciodvfy_errors, requires_dciodvfy, sr_content
from PIL import Image
from pydicom import dcmread
from pydicom.uid import UID, Comprehensive3DSRStorage

from model.dicom_results import (
    KINDS,
    ModelInfo,
    NotBuilt,
    ResultObject,
    Skip,
    anomaly_map,
    build_for_upload,
    build_objects,
    read_source,
    uids,
)
from model.dicom_results import codes as sr_codes
from model.dicom_results.identity import MANUFACTURER, NOT_FOR_DIAGNOSTIC_USE
from model.dicom_results.sc import MAX_SIDE, MIN_WIDTH, burn_in, caption, overlay
from model.heatmap import overlay_png
from model.imaging import HEADER_RULES, DecodedImage, ImageRejected, read_image
from model.runtime import ScoreResult, SquidRuntime
from tests.service.http_support import chest_like

SENTINEL_NAME = "Zebulonsentinel"  # no caret: highdicom warns about it, quoting the value
SENTINEL_ID = "PID-SENTINEL-4711"


@pytest.fixture(scope="module")
def runtime() -> SquidRuntime:
    return SquidRuntime(intra_op_threads=1)


@pytest.fixture(scope="module")
def model(runtime: SquidRuntime) -> ModelInfo:
    return ModelInfo.from_metadata(runtime.metadata)


def score(runtime: SquidRuntime, data: bytes, gates: bool = True) -> tuple[DecodedImage, ScoreResult]:
    decoded = read_image(data, header_rules=HEADER_RULES if gates else ())
    return decoded, runtime.score(runtime.preprocessing(decoded.pixels)[None])[0]


@pytest.fixture(scope="module")
def chest_upload() -> bytes:
    return make_dicom(
        chest_like(), modality="CR", patient_name=SENTINEL_NAME, patient_id=SENTINEL_ID, window=(2048, 4096)
    )


@pytest.fixture(scope="module")
def built(
    runtime: SquidRuntime, model: ModelInfo, chest_upload: bytes, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ScoreResult, DecodedImage, dict[str, Path]]:
    decoded, result = score(runtime, chest_upload)
    folder = tmp_path_factory.mktemp("objects")
    objects = build_for_upload(chest_upload, decoded, result, model)
    return result, decoded, {obj.kind: obj.write(folder) for obj in objects}


def test_uids_are_deterministic_per_source_model_and_kind() -> None:
    first = uids.instance_uid("1.2.3", "v1", "sr")
    assert first == uids.instance_uid("1.2.3", "v1", "sr")
    others = {
        uids.instance_uid("1.2.4", "v1", "sr"),
        uids.instance_uid("1.2.3", "v2", "sr"),
        uids.instance_uid("1.2.3", "v1", "sc"),
        uids.series_uid("1.2.3", "v1", "sr"),
    }
    assert first not in others and len(others) == 4
    for uid in (first, *others):
        assert UID(uid).is_valid and len(uid) <= 64


@requires_dciodvfy
def test_both_objects_pass_dciodvfy(built: tuple[ScoreResult, DecodedImage, dict[str, Path]]) -> None:
    _, _, paths = built
    assert set(paths) == set(KINDS)
    for path in paths.values():
        assert dciodvfy_errors(path) == [], path.name


def test_sr_reads_back_score_decision_model_and_source(
    built: tuple[ScoreResult, DecodedImage, dict[str, Path]], chest_upload: bytes, model: ModelInfo
) -> None:
    result, _, paths = built
    source = read_source(chest_upload)
    sr = dcmread(paths["sr"])
    assert sr.SOPClassUID == Comprehensive3DSRStorage
    assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "COMPLETE"
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.SeriesInstanceUID not in (source.SeriesInstanceUID, "")
    assert sr.PatientID == SENTINEL_ID and str(sr.PatientName) == SENTINEL_NAME
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    content = sr_content(sr)
    assert content.numbers[sr_codes.ANOMALY_SCORE.value] == result.score
    assert content.numbers[sr_codes.RAW_SCORE.value] == result.raw_score
    assert content.numbers[sr_codes.THRESHOLD.value] == result.threshold
    assert set(content.units.values()) == {"1"}
    expected = sr_codes.ABNORMAL if result.is_anomalous else sr_codes.NORMAL
    assert content.codes[sr_codes.DECISION.value] == expected.value
    assert content.texts["Algorithm Name"] == [model.name]
    assert content.texts["Algorithm Version"] == [model.version]
    assert any(model.weights_sha256 in text for text in content.texts["Algorithm Parameters"])
    assert any(NOT_FOR_DIAGNOSTIC_USE in text for text in content.texts["Comment"])
    reference = (str(source.SOPClassUID), str(source.SOPInstanceUID))
    assert content.images == [reference]
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == source.SeriesInstanceUID
    referenced = evidence.ReferencedSOPSequence[0]
    assert (referenced.ReferencedSOPClassUID, referenced.ReferencedSOPInstanceUID) == reference
    equipment = [item for item in sr.ContributingEquipmentSequence if item.Manufacturer == MANUFACTURER]
    assert len(equipment) == 1 and f"{model.name} {model.version}" in list(equipment[0].SoftwareVersions)
    assert sr.Manufacturer == MANUFACTURER and sr.ManufacturerModelName == model.name


def test_highdicom_parses_the_measurement_group(
    built: tuple[ScoreResult, DecodedImage, dict[str, Path]],
) -> None:
    result, _, paths = built
    report = hd.sr.srread(paths["sr"])
    groups = report.content.get_image_measurement_groups()
    assert len(groups) == 1
    score = groups[0].get_measurements(name=sr_codes.ANOMALY_SCORE)[0]
    assert score.value == pytest.approx(result.score, abs=1e-12)


def test_sc_shows_the_api_overlay_with_the_score_burned_in(
    built: tuple[ScoreResult, DecodedImage, dict[str, Path]], chest_upload: bytes, model: ModelInfo
) -> None:
    result, decoded, paths = built
    source = read_source(chest_upload)
    sc = dcmread(paths["sc"])
    pixels = sc.pixel_array
    png = overlay_png(decoded.pixels, result.anomaly_map, max_side=MAX_SIDE, vmax=result.map_scale)
    factor = -(-MIN_WIDTH // decoded.pixels.shape[1])  # 288 columns: each pixel repeated twice
    assert factor == 2
    expected = np.asarray(Image.open(io.BytesIO(png))).repeat(factor, axis=0).repeat(factor, axis=1)
    height = expected.shape[0]
    assert pixels.shape[1] == expected.shape[1] and pixels.shape[0] > height
    assert np.array_equal(pixels[:height], expected)
    lines = caption(result, model)
    assert f"{result.score:.3f}" in lines[0] and NOT_FOR_DIAGNOSTIC_USE in lines
    assert "fixed scale" in lines[1]  # the legend: a colour means the same on every capture
    assert np.array_equal(pixels, burn_in(expected, lines))
    other = caption(ScoreResult(**{**result.__dict__, "score": result.score / 2}), model)
    assert not np.array_equal(pixels, burn_in(expected, other))  # the band shows this score
    assert sc.BurnedInAnnotation == "YES" and NOT_FOR_DIAGNOSTIC_USE in sc.ImageComments
    assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.PatientID == SENTINEL_ID
    ref = sc.SourceImageSequence[0]
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (
        source.SOPClassUID,
        source.SOPInstanceUID,
    )
    assert sc.SeriesInstanceUID not in (source.SeriesInstanceUID, dcmread(paths["sr"]).SeriesInstanceUID)


def test_sc_follows_the_runtime_map(runtime: SquidRuntime, chest_upload: bytes) -> None:
    decoded, result = score(runtime, chest_upload)
    flipped = ScoreResult(**{**result.__dict__, "anomaly_map": result.anomaly_map[::-1].copy()})
    assert anomaly_map(flipped) is flipped.anomaly_map
    assert not np.array_equal(overlay(decoded.pixels, result), overlay(decoded.pixels, flipped))


def test_a_second_build_replaces_the_first(
    runtime: SquidRuntime, model: ModelInfo, chest_upload: bytes, tmp_path: Path
) -> None:
    decoded, result = score(runtime, chest_upload)
    first = [obj.write(tmp_path) for obj in build_for_upload(chest_upload, decoded, result, model)]
    second = [obj.write(tmp_path) for obj in build_for_upload(chest_upload, decoded, result, model)]
    assert first == second and sorted(tmp_path.iterdir()) == sorted(first)
    for a, b in zip(first, second, strict=True):
        assert dcmread(a).SOPInstanceUID == dcmread(b).SOPInstanceUID
    newer = ModelInfo(model.name, model.version + ".next", model.weights_sha256)
    renamed = build_for_upload(chest_upload, decoded, result, newer)
    assert {obj.sop_instance_uid for obj in renamed}.isdisjoint(dcmread(p).SOPInstanceUID for p in first)


def test_png_and_uid_less_sources_are_refused_with_a_reason(runtime: SquidRuntime, model: ModelInfo) -> None:
    png = io.BytesIO()
    Image.fromarray((chest_like(top=255)).astype(np.uint8)).save(png, format="PNG")
    decoded, result = score(runtime, png.getvalue())
    with pytest.raises(NotBuilt) as refused:
        build_for_upload(png.getvalue(), decoded, result, model)
    assert refused.value.reason == Skip.NOT_DICOM
    no_study = make_dicom(chest_like(), modality="CR", extra={"StudyInstanceUID": ""})
    decoded, result = score(runtime, no_study)
    with pytest.raises(NotBuilt) as refused:
        build_for_upload(no_study, decoded, result, model)
    assert refused.value.reason == Skip.MISSING_UIDS and "StudyInstanceUID" in refused.value.detail


def test_an_unknown_sop_class_is_a_reason_not_a_crash(runtime: SquidRuntime, model: ModelInfo) -> None:
    private = make_dicom(chest_like(), modality="CR", patient_name=SENTINEL_NAME, sop_class="1.2.3.4.5.6.7")
    decoded, result = score(runtime, private)
    with pytest.raises(NotBuilt) as refused:
        build_for_upload(private, decoded, result, model)
    assert refused.value.reason == Skip.BUILD_FAILED
    assert SENTINEL_NAME.lower() not in refused.value.detail.lower()


def test_building_leaks_no_identifier_into_warnings_or_logs(
    runtime: SquidRuntime, model: ModelInfo, chest_upload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    decoded, result = score(runtime, chest_upload)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        objects: list[ResultObject] = build_for_upload(chest_upload, decoded, result, model)
    assert len(objects) == 2
    emitted = " ".join(str(w.message) for w in caught) + caplog.text
    assert SENTINEL_NAME not in emitted and SENTINEL_ID not in emitted


def test_invalid_source_values_are_dropped_not_copied(
    runtime: SquidRuntime, model: ModelInfo, tmp_path: Path
) -> None:
    upload = make_dicom(chest_like(), modality="CR", extra={"PatientAge": "62", "PatientSex": "O"})
    decoded, result = score(runtime, upload)
    for obj in build_objects(read_source(upload), result, model, decoded.pixels):
        written = dcmread(obj.write(tmp_path))
        assert "PatientAge" not in written and written.PatientSex == "O"


@requires_dciodvfy
@pytest.mark.parametrize(
    ("extra", "sex", "charset"),
    [
        ({"PatientSex": "U"}, "", None),
        ({"PatientSex": "MALE"}, "", None),
        ({"PatientSex": "Q"}, "", None),
        ({"SpecificCharacterSet": "ISO_IR 6"}, "M", None),  # the default repertoire, spelt out
        ({"SpecificCharacterSet": "ISO 2022 IR 6"}, "M", None),  # a code extension used alone
        ({"SpecificCharacterSet": "ISO_IR 100", "PatientSex": "F"}, "F", "ISO_IR 100"),
    ],
)
def test_common_header_values_highdicom_refuses_are_left_out_not_a_reason_to_drop_the_result(
    runtime: SquidRuntime,
    model: ModelInfo,
    tmp_path: Path,
    extra: dict[str, str],
    sex: str,
    charset: str | None,
) -> None:
    upload = make_dicom(chest_like(), modality="CR", extra={"PatientSex": "M", **extra})
    decoded, result = score(runtime, upload)
    objects = build_for_upload(upload, decoded, result, model)
    assert sorted(obj.kind for obj in objects) == ["sc", "sr"]
    for obj in objects:
        path = obj.write(tmp_path)
        written = dcmread(path)
        assert written.PatientSex == sex and written.get("SpecificCharacterSet") == charset
        assert str(written.PatientName) == "Doe^Jane"
        assert dciodvfy_errors(path) == [], obj.kind


def test_a_name_outside_ascii_survives_an_unknown_character_set(
    runtime: SquidRuntime, model: ModelInfo, tmp_path: Path
) -> None:
    upload = make_dicom(
        chest_like(), modality="CR", patient_name="Müller^Zoë", extra={"SpecificCharacterSet": "ISO_IR 100"}
    )
    source = dcmread(io.BytesIO(upload))
    source.SpecificCharacterSet = "LATIN-1 PLEASE"  # no defined term: pydicom falls back to its default
    buffer = io.BytesIO()
    source.save_as(buffer)
    decoded, result = score(runtime, buffer.getvalue())
    for obj in build_for_upload(buffer.getvalue(), decoded, result, model):
        written = dcmread(obj.write(tmp_path))
        assert written.SpecificCharacterSet == "ISO_IR 192"
        assert str(written.PatientName) == str(read_source(buffer.getvalue()).PatientName)


@pytest.mark.data
@requires_dciodvfy
def test_every_real_dicom_file_gives_valid_objects_or_a_clear_reason(
    shared_data: Path, runtime: SquidRuntime, model: ModelInfo, tmp_path: Path
) -> None:
    """MONOCHROME1, every compressed transfer syntax, a file without File Meta, an SC-class source.

    Gates are off so the hip and extremity test images exercise the builders too; the two JPLY
    originals that pydicom's plugins refuse are read by libjpeg-turbo and get their objects too.
    """
    folder = shared_data / "dicom"
    refused: dict[str, str] = {}
    built: list[str] = []
    for path in sorted(folder.rglob("*.dcm")):
        name = path.relative_to(folder).as_posix()
        data = path.read_bytes()
        try:
            decoded, result = score(runtime, data, gates=False)
        except ImageRejected as exc:
            refused[name] = exc.reason
            continue
        for obj in build_for_upload(data, decoded, result, model):
            written = obj.write(tmp_path / path.stem)
            assert dciodvfy_errors(written) == [], f"{name} {obj.kind}"
            assert dcmread(written).StudyInstanceUID == read_source(data).StudyInstanceUID
        built.append(name)
    assert refused == {}
    assert len(built) == 21 and "fo-dicom/CR-MONO1-10-chest.dcm" in built


def test_the_builders_import_neither_torch_nor_the_service() -> None:
    """The CLI scores without importing service/, and a DICOM node reuses these builders."""
    code = (
        "import sys, model.dicom_results\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'service', 'training', 'fastapi')]\n"
        "assert not bad, bad\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
