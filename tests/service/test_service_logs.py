"""Logs are JSON lines and never carry patient names, IDs or birth dates."""

from __future__ import annotations

import json

import httpx
from dicom_factory import make_dicom
from http_support import Server, chest_like
from pydicom.uid import JPEG2000Lossless, RLELossless

NAME = "Zyxwvut^Sentinelle"
PATIENT_ID = "SENTINEL-ID-482913"
BIRTH_DATE = "18870322"
SENTINELS = (NAME, "Zyxwvut", "Sentinelle", PATIENT_ID, BIRTH_DATE, "1887-03-22")


def test_patient_identifiers_never_reach_the_logs(server: Server, client: httpx.Client) -> None:
    identity = {"patient_name": NAME, "patient_id": PATIENT_ID, "birth_date": BIRTH_DATE}
    v = chest_like(96, 96)
    cases = [
        make_dicom(v, bits_stored=12, **identity),  # scored
        make_dicom(v, bits_stored=12, view_position="LATERAL", **identity),  # rejected by a gate
        make_dicom(v, bits_stored=12, no_file_meta=True, **identity),
        make_dicom(None, modality="SR", with_pixels=False, **identity),
        make_dicom(v, bits_stored=12, transfer_syntax=JPEG2000Lossless, **identity)[:-300],  # undecodable
        make_dicom(v, bits_stored=12, transfer_syntax=RLELossless, **identity)[:-100],
        make_dicom(v, bits_stored=12, extra={"OtherPatientIDs": [PATIENT_ID]}, **identity),
    ]
    statuses = []
    for data in cases:
        filename = f"{NAME}_{PATIENT_ID}_{BIRTH_DATE}.dcm"  # names often carry identifiers too
        response = client.post("/score", files={"file": (filename, data)}, params={"heatmap": "true"})
        statuses.append(response.status_code)
        for sentinel in SENTINELS:
            assert sentinel.lower() not in response.text.lower()
    assert 200 in statuses and 422 in statuses and 500 not in statuses

    text = server.logs()
    for sentinel in SENTINELS:
        assert sentinel.lower() not in text.lower(), f"{sentinel!r} leaked into the logs"
    records = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is JSON
    events = {record["event"] for record in records if record.get("logger") == "squid.score"}
    assert {"scored", "rejected"} <= events
    access = [r for r in records if r.get("logger") == "squid.access" and r.get("endpoint") == "/score"]
    assert access and all(r.get("request_id") for r in access)
    assert all({"ts", "level", "logger", "event"} <= set(record) for record in records)
