"""DICOMweb with dicomweb-client: find studies (QIDO-RS) and pull them (WADO-RS); :mod:`stow` sends results.

A pulled study is written as plain DICOM files into a folder, which then goes through the same batch
path as any PACS export folder, so a pulled study gets the same rows, scores and SR/SC as a folder.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Any

from pydicom import dcmwrite

from service.node.spool import is_uid
from service.settings import Settings

DATE = re.compile(r"^\d{8}$")


def base_url(settings: Settings, url: str | None = None) -> str:
    """``url``, or ``SQUID_DICOMWEB_URL``, without a trailing slash."""
    base = url or settings.dicomweb_url
    if not base:
        raise ValueError("no DICOMweb URL: pass --dicomweb or set SQUID_DICOMWEB_URL")
    return base.rstrip("/")


def session_for(settings: Settings) -> Any:
    """A requests session with the configured DICOMweb credentials."""
    from dicomweb_client.session_utils import create_session, create_session_from_user_pass

    if settings.dicomweb_username:
        password = settings.dicomweb_password.get_secret_value() if settings.dicomweb_password else ""
        return create_session_from_user_pass(settings.dicomweb_username, password)
    return create_session()


def client_for(settings: Settings, url: str | None = None) -> Any:
    """A DICOMwebClient for ``url`` (default ``SQUID_DICOMWEB_URL``) with the configured credentials."""
    from dicomweb_client.api import DICOMwebClient

    return DICOMwebClient(url=base_url(settings, url), session=session_for(settings))


def study_date_range(since: date | None, until: date | None) -> str:
    """A QIDO-RS StudyDate range value (``YYYYMMDD-YYYYMMDD``, either side open)."""
    return f"{since.strftime('%Y%m%d') if since else ''}-{until.strftime('%Y%m%d') if until else ''}"


def find_studies(settings: Settings, url: str | None, since: date | None, until: date | None) -> list[str]:
    """Study Instance UIDs whose StudyDate lies in the range (QIDO-RS)."""
    client = client_for(settings, url)
    found = client.search_for_studies(search_filters={"StudyDate": study_date_range(since, until)})
    uids = []
    for study in found:
        values = study.get("0020000D", {}).get("Value", [])
        if values and is_uid(str(values[0])):
            uids.append(str(values[0]))
    return sorted(set(uids))


def pull_study(settings: Settings, url: str | None, study_uid: str, folder: Path) -> int:
    """Write every instance of one study into ``folder/<study>/``; returns how many."""
    if not is_uid(study_uid):
        raise ValueError("--study is not a valid Study Instance UID")
    client = client_for(settings, url)
    target = folder / study_uid
    target.mkdir(parents=True, exist_ok=True)
    count = 0
    for dataset in client.iter_study(study_uid):
        sop_uid = str(dataset.get("SOPInstanceUID", ""))
        name = sop_uid if is_uid(sop_uid) else f"instance-{count}"
        dcmwrite(target / f"{name}.dcm", dataset, enforce_file_format=True)
        count += 1
    return count
