"""Peers of the node tests: a sending PACS (pynetdicom), and an attacker that holds raw sockets.

The loopback is a whole network on Linux (all of 127/8 reaches ``lo``), so a peer can bind another
source address such as 127.0.0.2 and be a different host to the node.
"""

from __future__ import annotations

import copy
import select
import socket
import struct
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.node.orthanc_support import NODE_AE

OTHER_HOST = "127.0.0.2"
# The first 20 bytes of an A-ASSOCIATE-RQ PDU that announces 4096 bytes: a sender stuck mid-PDU.
HALF_PDU = struct.pack(">BBL", 0x01, 0x00, 4096) + b"\x00\x01" + b"\x00" * 12


def instances(source: Path, count: int) -> list[Dataset]:
    """``count`` copies of a real image as new instances of one new study."""
    base = dcmread(source)
    study_uid = generate_uid()
    made = []
    for _ in range(count):
        ds = copy.deepcopy(base)
        ds.StudyInstanceUID = study_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        made.append(ds)
    return made


def large_instance(source: Path, target: Path, megabytes: int) -> Path:
    """A real DX header with ``megabytes`` of (black) 8-bit pixels, as one new instance."""
    ds = dcmread(source)
    ds.Rows = 16384
    ds.Columns = megabytes * 1024 * 1024 // ds.Rows
    ds.PixelData = bytes(ds.Rows * ds.Columns)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(target, enforce_file_format=True)
    return target


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident size so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def store(
    port: int,
    datasets: Sequence[Dataset],
    calling: str = "STORESCU",
    called: str = NODE_AE,
    source: str = "127.0.0.1",
) -> list[int]:
    """C-STORE ``datasets`` in one association: their statuses, or -1 each when not associated."""
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=called, bind_address=(source, 0))
    if not assoc.is_established:
        return [-1] * len(datasets)
    try:
        return [int(getattr(assoc.send_c_store(ds), "Status", -1)) for ds in datasets]
    finally:
        assoc.release()


def connect(port: int, source: str = "127.0.0.1", first_bytes: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    if first_bytes:
        sock.sendall(first_bytes)
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the node closed this socket, without waiting (anything it sent first is dropped)."""
    try:
        while select.select([sock], [], [], 0)[0]:
            if not sock.recv(65536):
                return True
    except (OSError, ValueError):  # reset, or closed here already
        return True
    return False


class Attacker:
    """Holds ``silent`` sockets that never send and ``half`` sockets that sent half a PDU, and opens a
    new one whenever the node closes one, as the probe of issue 25 did."""

    def __init__(self, port: int, source: str, silent: int, half: int) -> None:
        self.port, self.source = port, source
        self.kinds = [b""] * silent + [HALF_PDU] * half
        self.sockets: list[socket.socket | None] = [None] * len(self.kinds)
        self.opened = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._hold, daemon=True)

    def __enter__(self) -> Attacker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)
        for sock in self.sockets:
            if sock is not None:
                sock.close()

    def _hold(self) -> None:
        while not self.stopping.is_set():
            for index, sock in enumerate(self.sockets):
                if sock is None or closed_by_peer(sock):
                    if sock is not None:
                        sock.close()
                    try:
                        self.sockets[index] = connect(self.port, self.source, self.kinds[index])
                        self.opened += 1
                    except OSError:
                        self.sockets[index] = None
            self.stopping.wait(0.2)

    def held(self) -> int:
        return sum(1 for sock in self.sockets if sock is not None and not closed_by_peer(sock))


def wait_closed(sockets: Sequence[socket.socket], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(closed_by_peer(sock) for sock in sockets):
            return True
        time.sleep(0.2)
    return False
