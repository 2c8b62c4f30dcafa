"""STOW-RS of result files, with the archive's answer read instance by instance (PS3.18 10.5).

An archive answers 200 when it stored every instance, 202 when it stored some and lists the others in
the FailedSOPSequence (0008,1198), and 409 when it stored none. An instance counts as stored only when
its SOP Instance UID is in the ReferencedSOPSequence (0008,1199) and not among the failures; a 200
whose body lists neither counts every instance as stored, any other answer none. The request asks
for the JSON answer; a server that answers XML is read by its status code alone.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydicom import dcmread

from service.node.dicomweb import base_url, session_for
from service.settings import Settings

log = logging.getLogger(__name__)

REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
JSON_TYPES = ("application/dicom+json", "application/json")
ANSWERED = (200, 202, 409)


def store(settings: Settings, files: Sequence[Path]) -> list[bool]:
    """POST ``files`` to ``{SQUID_DICOMWEB_URL}/studies``: one stored flag per file, in order."""
    uids = [str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in files]
    boundary = uuid.uuid4().hex
    body = b"".join(
        b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % (boundary.encode(), path.read_bytes())
        for path in files
    )
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": JSON_TYPES[0],
    }
    response = session_for(settings).post(
        f"{base_url(settings)}/studies",
        data=body + b"--%s--\r\n" % boundary.encode(),
        headers=headers,
        timeout=(settings.dicom_acse_timeout_seconds, settings.dicom_dimse_timeout_seconds),
    )
    return stored_flags(
        response.status_code, response.headers.get("Content-Type", ""), response.content, uids
    )


def stored_flags(status: int, content_type: str, body: bytes, uids: Sequence[str]) -> list[bool]:
    """Which of ``uids`` the archive's answer says it stored."""
    if status not in ANSWERED:
        log.warning("STOW-RS answered HTTP %d", status)
        return [False] * len(uids)
    answer = _json(content_type, body)
    if answer is None or not ({REFERENCED_SOP_SEQUENCE, FAILED_SOP_SEQUENCE} & answer.keys()):
        return [status == 200] * len(uids)
    stored = {_uid(item) for item in _items(answer, REFERENCED_SOP_SEQUENCE)}
    failed = {_uid(item) for item in _items(answer, FAILED_SOP_SEQUENCE)}
    for item in _items(answer, FAILED_SOP_SEQUENCE):
        reason = (item.get(FAILURE_REASON, {}).get("Value") or [None])[0]
        code = f"0x{reason:04X}" if isinstance(reason, int) else "not given"
        log.warning("STOW-RS (HTTP %d) refused an instance, failure reason %s", status, code)
    return [uid in stored and uid not in failed for uid in uids]


def _json(content_type: str, body: bytes) -> dict[str, Any] | None:
    if content_type.split(";")[0].strip().lower() not in JSON_TYPES or not body:
        return None
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


def _items(answer: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    items = answer.get(tag, {}).get("Value") or []
    return [item for item in items if isinstance(item, dict)]


def _uid(item: dict[str, Any]) -> str:
    return str((item.get(REFERENCED_SOP_INSTANCE_UID, {}).get("Value") or [""])[0])
