"""The Storage SCP of ``squid listen``: accept C-STOREs, file the images the model reads, skip the rest.

A sending PACS forwards whole studies, reports and CT included; failing those would make it retry
or alarm forever, so every storage class is accepted, and only the radiograph classes (CR, DX for
presentation and processing, secondary capture) with a transfer syntax the reader decodes are
spooled for scoring. Everything else is answered with success and counted as skipped with a reason.
Results this software wrote (its own SR and SC sent back by a routing rule) are skipped too, or they
would be scored again.

The handler never decodes pixels: it writes the encoded bytes as received (pynetdicom's fast path)
and reads only the few identifying attributes it needs. A failure to write becomes 0xA700 (out of
resources), an undecodable dataset 0xC210; pynetdicom turns anything unexpected into 0xC211.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from io import BytesIO
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
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from model.dicom_results.identity import MANUFACTURER
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
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC210


@dataclass
class StoreHandler:
    """Handles EVT_C_STORE for one node; per-association byte counts bound an association's size."""

    spool: Spool
    metrics: NodeMetrics
    max_association_bytes: int
    received: dict[int, int] = field(default_factory=dict)

    def on_store(self, event: Event) -> int:
        sop_class = str(getattr(event.request, "AffectedSOPClassUID", ""))
        encoded = event.encoded_dataset()
        key = id(event.assoc)
        self.received[key] = self.received.get(key, 0) + len(encoded)
        if self.received[key] > self.max_association_bytes:
            self.metrics.received.labels("rejected", "association_too_large").inc()
            return OUT_OF_RESOURCES
        reason = self._skip_reason(sop_class, str(event.context.transfer_syntax))
        if reason:
            self.metrics.received.labels("skipped", reason).inc()
            log.info("instance skipped", extra={"reason": reason, "sop_class": sop_class})
            return SUCCESS
        try:
            header = dcmread(BytesIO(encoded), stop_before_pixels=True, force=True)
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
            self.spool.put_instance(study_uid, sop_uid, encoded)
        except OSError as exc:
            log.error("spool write failed: %s", exc.strerror or type(exc).__name__)
            self.metrics.received.labels("rejected", "spool_write_failed").inc()
            return OUT_OF_RESOURCES
        self.metrics.received.labels("stored", "").inc()
        return SUCCESS

    def on_closed(self, event: Event) -> None:
        self.received.pop(id(event.assoc), None)

    @staticmethod
    def _skip_reason(sop_class: str, syntax: str) -> str:
        if sop_class not in SCORED_CLASSES:
            return "not_a_radiograph_class"
        if syntax not in DECODED_SYNTAXES:
            return "transfer_syntax_not_decoded"
        return ""


def make_ae(settings: Settings, ae_title: str) -> AE:
    """The application entity: every storage class (scored or skipped) with every transfer syntax."""
    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = 0  # no limit: let the sender pick
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context("1.2.840.10008.1.1")  # Verification (C-ECHO)
    if settings.dicom_allowed_aes:
        ae.require_calling_aet = list(settings.dicom_allowed_aes)
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


def start_scp(
    settings: Settings, ae_title: str, port: int, spool: Spool, metrics: NodeMetrics
) -> ThreadedAssociationServer:
    """Start listening in background threads; the caller stops it with ``server.shutdown()``."""
    handler = StoreHandler(spool, metrics, int(settings.dicom_max_association_mb * 1024 * 1024))
    handlers: list[Any] = [
        (evt.EVT_C_STORE, handler.on_store),
        (evt.EVT_CONN_CLOSE, handler.on_closed),
        (evt.EVT_REJECTED, lambda event: metrics.associations.labels("rejected").inc()),
        (evt.EVT_ACCEPTED, lambda event: metrics.associations.labels("accepted").inc()),
    ]
    return ae_server(make_ae(settings, ae_title), settings.dicom_host, port, handlers, tls_context(settings))


def ae_server(
    ae: AE, host: str, port: int, handlers: list[Any], context: ssl.SSLContext | None
) -> ThreadedAssociationServer:
    server = ae.start_server((host, port), block=False, evt_handlers=handlers, ssl_context=context)
    assert server is not None  # block=False always returns the server
    return server
