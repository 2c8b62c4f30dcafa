"""Sending results back: C-STORE to DICOM nodes, STOW-RS to a DICOMweb server, from the spool's outbox.

A result leaves the outbox only when its destination acknowledged it: a success or warning status of
its own C-STORE, or its SOP Instance UID among those the STOW-RS answer says were stored
(:mod:`service.node.stow`). Every file succeeds or fails on its own. Failed sends are retried after a
doubling wait and counted on disk next to the file, so a restart keeps both the file and its count;
after ``SQUID_DICOM_SEND_ATTEMPTS`` the file moves to ``dead/<destination>/``. Re-sending is
harmless: results have deterministic SOP Instance UIDs, which an archive stores once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.association import Association

from service.node import stow
from service.node.guard import apply_timeouts
from service.node.metrics import NodeMetrics
from service.node.spool import Spool, read_attempts, write_attempts
from service.settings import DicomDestination, Settings

log = logging.getLogger(__name__)

STOW_KEY = "stow"
# Success, and the warnings an SCP gives for a stored instance (coercion, elements discarded).
STORED = {0x0000, 0xB000, 0xB006, 0xB007}
UNCOMPRESSED = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))


class Sender(Protocol):
    @property
    def key(self) -> str: ...

    def send(self, files: Sequence[Path]) -> list[bool]:
        """One acknowledgement flag per file, in order; never raises for a network failure."""
        ...


@dataclass
class CStoreSender:
    """C-STORE to one destination: one association per round, each file acknowledged on its own, so
    a class the destination does not accept (no presentation context) costs that file only."""

    destination: DicomDestination
    calling_ae_title: str
    settings: Settings

    @property
    def key(self) -> str:
        return self.destination.key

    def send(self, files: Sequence[Path]) -> list[bool]:
        from pynetdicom import AE

        datasets = [self._read(path) for path in files]
        proposals = requested_contexts([ds for ds in datasets if ds is not None])
        if not proposals:
            return [False] * len(files)
        ae = AE(ae_title=self.calling_ae_title)
        apply_timeouts(ae, self.settings)
        for sop_class, syntaxes in proposals.items():
            ae.add_requested_context(sop_class, syntaxes)
        dest = self.destination
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
        if not assoc.is_established:
            log.warning("no association with %s", self.key)
            return [False] * len(files)
        try:
            return [ds is not None and self._store(assoc, ds) for ds in datasets]
        finally:
            if assoc.is_established:
                assoc.release()

    def _read(self, path: Path) -> Dataset | None:
        try:
            return dcmread(path)
        except Exception as exc:  # a damaged outbox file fails alone
            log.warning("result for %s unreadable: %s", self.key, type(exc).__name__)
            return None

    def _store(self, assoc: Association, ds: Dataset) -> bool:
        try:
            status = assoc.send_c_store(ds)
        except ValueError:  # pynetdicom: the destination accepted no context for this class
            log.warning("%s accepted no presentation context for %s", self.key, UID(ds.SOPClassUID).name)
            return False
        except Exception as exc:  # the association went away mid-round
            log.warning("C-STORE to %s failed: %s", self.key, type(exc).__name__)
            return False
        code = int(status.get("Status", -1)) if status else -1
        if code not in STORED:
            log.warning("C-STORE to %s answered status 0x%04X", self.key, code & 0xFFFF)
        return code in STORED


def requested_contexts(datasets: Sequence[Dataset]) -> dict[str, list[str]]:
    """Per SOP class the transfer syntaxes to propose: each file's own, and for an uncompressed file
    both little-endian syntaxes (pynetdicom converts between them), for a destination that takes one."""
    proposals: dict[str, list[str]] = {}
    for ds in datasets:
        syntaxes = proposals.setdefault(str(ds.SOPClassUID), [])
        own = str(ds.file_meta.TransferSyntaxUID)
        for syntax in (own, *UNCOMPRESSED) if own in UNCOMPRESSED else (own,):
            if syntax not in syntaxes:
                syntaxes.append(syntax)
    return proposals


@dataclass
class StowSender:
    """STOW-RS of each round's files in one request; each file is stored or not as the answer says."""

    settings: Settings
    key: str = STOW_KEY

    def send(self, files: Sequence[Path]) -> list[bool]:
        try:
            return stow.store(self.settings, files)
        except Exception as exc:  # requests' errors, an unreadable file
            log.warning("STOW-RS failed: %s", type(exc).__name__)
            return [False] * len(files)


def senders_for(settings: Settings, calling_ae_title: str) -> dict[str, Sender]:
    """The configured destinations by outbox name."""
    senders: dict[str, Sender] = {
        dest.key: CStoreSender(dest, calling_ae_title, settings) for dest in settings.dicom_destinations or []
    }
    if settings.dicom_stow:
        if not settings.dicomweb_url:
            raise ValueError("SQUID_DICOM_STOW needs SQUID_DICOMWEB_URL")
        senders[STOW_KEY] = StowSender(settings)
    return senders


@dataclass
class Dispatcher:
    """Drains the outbox: one round sends what is due to every destination."""

    spool: Spool
    senders: dict[str, Sender]
    metrics: NodeMetrics
    attempts: int
    retry_seconds: float
    batch: int = 64
    not_before: dict[Path, float] = field(default_factory=dict)

    def round(self, now: float | None = None) -> int:
        """Send what is due; returns how many results were acknowledged."""
        now = time.monotonic() if now is None else now
        acked = 0
        for key in self.spool.destinations_with_mail():
            sender = self.senders.get(key)
            if sender is None:  # a destination taken out of the settings keeps its mail
                continue
            due = [item for item in self.spool.pending(key) if self.not_before.get(item, 0.0) <= now]
            for start in range(0, len(due), self.batch):
                acked += self._send(key, sender, due[start : start + self.batch], now)
        return acked

    def _send(self, key: str, sender: Sender, items: list[Path], now: float) -> int:
        try:
            flags = sender.send(items)
        except Exception as exc:  # a broken file or an unexpected library error: count as a failure
            log.warning("send to %s failed: %s", key, type(exc).__name__)
            flags = [False] * len(items)
        for item, ok in zip(items, flags, strict=True):
            if ok:
                self.spool.acknowledged(item)
                self.not_before.pop(item, None)
                self.metrics.sent.labels(key).inc()
                continue
            self.metrics.send_failures.labels(key).inc()
            tried = read_attempts(item) + 1
            if tried >= self.attempts:
                self.spool.dead_letter(key, item)
                self.not_before.pop(item, None)
                self.metrics.dead.labels(key).inc()
                log.error("result to %s moved to the dead-letter folder after %d attempts", key, tried)
            else:
                write_attempts(item, tried)
                self.not_before[item] = now + self.retry_seconds * 2 ** (tried - 1)
        return sum(flags)
