"""The Storage SCP of ``squid listen``: accept C-STOREs, file the images the model reads, skip the rest.

A sending PACS forwards whole studies, reports and CT included; failing those would make it retry
or alarm forever, so every storage class is accepted, and only the radiograph classes (CR, DX for
presentation and processing, secondary capture) with a transfer syntax the reader decodes are
spooled for scoring. Everything else is answered with success and counted as skipped with a reason.
Results this software wrote (its own SR and SC sent back by a routing rule) are skipped too, or they
would be scored again.

Received datasets are never held in memory: pynetdicom streams each one into a file in the spool's
``tmp/`` as its PDUs arrive, and filing it is a rename. Bytes are counted as they arrive, and an
association that goes over ``SQUID_DICOM_MAX_ASSOCIATION_MB`` is aborted there and then. The handler
never decodes pixels and reads only the few identifying attributes it needs. A failure to file
becomes 0xA700 (out of resources), an undecodable dataset 0xC210; pynetdicom turns anything
unexpected into 0xC211. Who may associate at all is :class:`Admission`'s decision.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.association import Association
from pynetdicom.events import Event

from model.dicom_results.identity import MANUFACTURER
from service.node.guard import ConnectionGuard, GuardedServer, Limits, apply_timeouts, serve
from service.node.metrics import NodeMetrics
from service.node.spool import Spool, is_uid
from service.settings import Settings

log = logging.getLogger(__name__)

SCORED_CLASSES: tuple[UID, ...] = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
)
# What model.imaging decodes (pydicom + pylibjpeg, libjpeg, openjpeg, rle): the native syntaxes,
# deflate, JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000 and RLE.
DECODED_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5",
)
P_DATA_TF = 0x04  # the PDU type that carries DIMSE messages
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC210


@dataclass
class StoreHandler:
    """Handles the C-STOREs of one node; per-association byte counts bound an association's size."""

    spool: Spool
    metrics: NodeMetrics
    max_association_bytes: int
    received: dict[int, int] = field(default_factory=dict)

    def on_data(self, event: Event) -> None:
        """EVT_DATA_RECV, once per PDU as it arrives: abort an association as it goes over the limit."""
        data: bytes = event.data
        if not data or data[0] != P_DATA_TF:
            return
        key = id(event.assoc)
        before = self.received.get(key, 0)
        self.received[key] = before + len(data)
        if before <= self.max_association_bytes < before + len(data):
            self.metrics.received.labels("rejected", "association_too_large").inc()
            log.warning("association over SQUID_DICOM_MAX_ASSOCIATION_MB: aborted")
            event.assoc.abort()

    def on_store(self, event: Event) -> int:
        if self.received.get(id(event.assoc), 0) > self.max_association_bytes:
            return OUT_OF_RESOURCES  # its abort is on the way
        sop_class = str(getattr(event.request, "AffectedSOPClassUID", ""))
        reason = self._skip_reason(sop_class, str(event.context.transfer_syntax))
        if reason:
            self.metrics.received.labels("skipped", reason).inc()
            log.info("instance skipped", extra={"reason": reason, "sop_class": sop_class})
            return SUCCESS
        received = Path(event.dataset_path)
        try:
            header = dcmread(received, stop_before_pixels=True, force=True)
            study_uid = str(header.get("StudyInstanceUID", ""))
            sop_uid = str(header.get("SOPInstanceUID", ""))
            own = str(header.get("Manufacturer", "")) == MANUFACTURER
        except Exception:
            self.metrics.received.labels("rejected", "undecodable").inc()
            return CANNOT_UNDERSTAND
        if own:
            self.metrics.received.labels("skipped", "own_result").inc()
            return SUCCESS
        if not (is_uid(study_uid) and is_uid(sop_uid)):
            self.metrics.received.labels("rejected", "invalid_uid").inc()
            return CANNOT_UNDERSTAND
        try:
            self.spool.put_instance(study_uid, sop_uid, received)
        except OSError as exc:
            log.error("spool write failed: %s", exc.strerror or type(exc).__name__)
            self.metrics.received.labels("rejected", "spool_write_failed").inc()
            return OUT_OF_RESOURCES
        self.metrics.received.labels("stored", "").inc()
        return SUCCESS

    def forget(self, assoc: Association) -> None:
        """The association ended: drop its byte count, and the file of an instance it did not finish
        (aborted, or the disk filled up), which would otherwise hold its space until a restart."""
        self.received.pop(id(assoc), None)
        unfinished = getattr(getattr(assoc.dimse, "message", None), "_data_set_file", None)
        if unfinished is not None:
            with contextlib.suppress(OSError):  # closing flushes its last bytes: on a full disk it fails
                unfinished.close()
            Path(unfinished.name).unlink(missing_ok=True)

    @staticmethod
    def _skip_reason(sop_class: str, syntax: str) -> str:
        if sop_class not in SCORED_CLASSES:
            return "not_a_radiograph_class"
        if syntax not in DECODED_SYNTAXES:
            return "transfer_syntax_not_decoded"
        return ""


@dataclass
class Admission:
    """Who may associate, decided on EVT_REQUESTED: a calling AE title on the allow-list (any title
    only on an explicitly open node), our own called AE title, and a free association slot.

    Checked here rather than by pynetdicom, whose empty allow-list admits everyone, so that every
    rejection is counted with its reason."""

    allowed: frozenset[str] | None  # None: an open node
    ae_title: str
    guard: ConnectionGuard
    metrics: NodeMetrics

    def on_requested(self, event: Event) -> None:
        assoc = event.assoc
        request = assoc.requestor.primitive
        assert request is not None  # EVT_REQUESTED fires once the request is in
        calling = str(request.calling_ae_title).strip()
        if self.allowed is not None and calling not in self.allowed:
            reason, rejection = "calling_ae_not_allowed", (0x01, 0x01, 0x03)
        elif str(request.called_ae_title).strip() != self.ae_title:
            reason, rejection = "called_ae_wrong", (0x01, 0x01, 0x07)
        elif not self.guard.take_slot(assoc):
            reason, rejection = "no_association_slot", (0x02, 0x03, 0x02)
        else:
            return
        self.metrics.associations.labels("rejected", reason).inc()
        log.warning("association from calling AE %r rejected: %s", calling, reason)
        assoc.acse.send_reject(*rejection)
        assoc.kill()  # as pynetdicom does after its own rejections: waits until the A-ASSOCIATE-RJ is out


def allowed_titles(settings: Settings) -> frozenset[str] | None:
    """The calling AE titles admitted; None only when the node is explicitly open to any title."""
    if settings.dicom_allow_any_ae:
        return None
    return frozenset(title.strip() for title in settings.dicom_allowed_aes or [])


def make_ae(settings: Settings, ae_title: str) -> AE:
    """The application entity: every storage class (scored or skipped) with every transfer syntax."""
    ae = AE(ae_title=ae_title)
    apply_timeouts(ae, settings)
    ae.maximum_pdu_size = settings.dicom_max_pdu_bytes
    # The guard's caps govern; pynetdicom's own count also holds connections still shutting down.
    ae.maximum_associations = 2 * settings.dicom_max_connections
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context("1.2.840.10008.1.1")  # Verification (C-ECHO)
    return ae


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """A server TLS context from the settings, or None for plain DICOM."""
    if settings.dicom_tls_cert is None or settings.dicom_tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(settings.dicom_tls_cert), str(settings.dicom_tls_key))
    if settings.dicom_tls_ca is not None:
        context.load_verify_locations(str(settings.dicom_tls_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def stream_into(spool: Spool) -> None:
    """Have pynetdicom write each received dataset to a file in the spool's ``tmp/`` as its PDUs
    arrive, instead of into memory. Both knobs are process-wide: one node per process."""
    _config.STORE_RECV_CHUNKED_DATASET = True
    tempfile.tempdir = str(spool.folder("tmp"))


def start_scp(
    settings: Settings, ae_title: str, port: int, spool: Spool, metrics: NodeMetrics
) -> GuardedServer:
    """Start listening in background threads; the caller stops it with ``server.shutdown()``."""
    stream_into(spool)
    guard = ConnectionGuard(Limits.from_settings(settings), metrics)
    store = StoreHandler(spool, metrics, int(settings.dicom_max_association_mb * 1024 * 1024))
    admission = Admission(allowed_titles(settings), ae_title.strip(), guard, metrics)
    if admission.allowed == frozenset():
        log.warning(
            "no calling AE title may associate: set SQUID_DICOM_ALLOWED_AES "
            "(or SQUID_DICOM_ALLOW_ANY_AE=true for an open node)"
        )
    handlers: list[Any] = [
        (evt.EVT_REQUESTED, admission.on_requested),
        (evt.EVT_DATA_RECV, store.on_data),
        (evt.EVT_C_STORE, store.on_store),
        (evt.EVT_REJECTED, lambda event: metrics.associations.labels("rejected", "protocol").inc()),
        (evt.EVT_ACCEPTED, lambda event: metrics.associations.labels("accepted", "").inc()),
    ]
    ae = make_ae(settings, ae_title)
    return serve(ae, (settings.dicom_host, port), handlers, tls_context(settings), guard, store.forget)
