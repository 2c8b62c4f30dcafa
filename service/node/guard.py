"""Connection limits of the node's DICOM port: read timeouts, caps per peer and overall, the largest PDU.

pynetdicom counts a TCP connection as an association from the moment it is accepted, so sockets that
never sent a byte filled its slots and locked every PACS out, and a read blocked in the middle of a
PDU never timed out. :func:`serve` runs the acceptor with :class:`GuardedServer` instead, which

- gives every accepted socket a read timeout (``SQUID_DICOM_NETWORK_TIMEOUT_SECONDS``): a PDU or a TLS
  handshake that stalls that long closes the connection;
- does the TLS handshake in the connection's own thread, never in the accept loop;
- counts a connection as *pending* until its association request arrives; only a request that was
  admitted takes one of ``SQUID_DICOM_MAX_ASSOCIATIONS`` slots (:meth:`ConnectionGuard.take_slot`);
- caps open connections per peer address and overall: at a cap the oldest pending connection is
  closed to make room (a PACS asks for its association as soon as it connects, so what has been
  pending longest is not a PACS at work), and when none is pending the new connection is refused;
- closes a connection whose PDU announces more bytes than the node accepts, before reading them.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from service.node.metrics import NodeMetrics
from service.settings import Settings

log = logging.getLogger(__name__)

# An association request carries no pixel data but may list many contexts or a user identity token:
# this much is accepted for it whatever the maximum PDU size.
REQUEST_PDU_BYTES = 256 * 1024


@dataclass(frozen=True)
class Limits:
    max_connections: int
    max_per_peer: int
    max_associations: int
    read_timeout: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            settings.dicom_max_connections,
            settings.dicom_max_connections_per_peer,
            settings.dicom_max_associations,
            settings.dicom_network_timeout_seconds,
        )

    def as_metrics(self) -> dict[str, int]:
        return {
            "connections": self.max_connections,
            "per_peer": self.max_per_peer,
            "associations": self.max_associations,
        }


@dataclass(eq=False)
class Connection:
    """One accepted socket; ``associated`` once its association request was admitted."""

    peer: str
    sock: socket.socket
    assoc: Association | None = None
    associated: bool = False
    closed: bool = False

    def close(self) -> None:
        """End it from another thread: a read blocked on the socket returns, and an association still
        waiting for its request stops waiting."""
        self.closed = True
        with contextlib.suppress(OSError):  # the plain socket's shutdown: SSLSocket's drops its state
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
        if self.assoc is not None:
            # What the wait for A-ASSOCIATE-RQ reads as its timeout: the association ends now.
            self.assoc.dul.to_user_queue.put(None)  # type: ignore[arg-type]


class ConnectionGuard:
    """The open connections of one server, oldest first, and the caps they run into."""

    def __init__(self, limits: Limits, metrics: NodeMetrics) -> None:
        self.limits = limits
        self.metrics = metrics
        self.lock = threading.Lock()
        self.open: list[Connection] = []
        metrics.watch_connections(self.count, limits.as_metrics())

    def admit(self, sock: socket.socket, peer: str) -> Connection | None:
        """Register a new connection, closing the oldest pending one at a full cap; None: refused."""
        with self.lock:
            caps = (
                ("peer_limit", self.limits.max_per_peer, peer),
                ("connection_limit", self.limits.max_connections, None),
            )
            for reason, cap, scope in caps:
                holding = [c for c in self.open if scope is None or c.peer == scope]
                if len(holding) < cap:
                    continue
                oldest = next((c for c in holding if not c.associated), None)
                if oldest is None:
                    self.metrics.connections.labels("refused", reason).inc()
                    log.warning("connection from %s refused at the %s cap", peer, reason)
                    return None
                self.open.remove(oldest)
                oldest.close()
                self.metrics.connections.labels("evicted", reason).inc()
            connection = Connection(peer, sock)
            self.open.append(connection)
            self.metrics.connections.labels("accepted", "").inc()
            return connection

    def find(self, sock: socket.socket) -> Connection | None:
        with self.lock:
            return next((c for c in self.open if c.sock is sock), None)

    def attach(self, connection: Connection, assoc: Association) -> bool:
        """Tie the association to its connection; False when the connection was closed meanwhile."""
        with self.lock:
            connection.assoc = assoc
            return not connection.closed

    def take_slot(self, assoc: Association) -> bool:
        """An association request arrived: admit it to a free association slot, or not."""
        with self.lock:
            connection = next((c for c in self.open if c.assoc is assoc), None)
            if connection is None or connection.closed:
                return False
            if sum(c.associated for c in self.open) >= self.limits.max_associations:
                return False
            connection.associated = True
            return True

    def release(self, connection: Connection) -> None:
        with self.lock:
            if connection in self.open:
                self.open.remove(connection)

    def count(self, state: str) -> int:
        with self.lock:
            return sum(1 for c in self.open if c.associated == (state == "associated"))


class BoundedSocket(AssociationSocket):
    """pynetdicom reads a PDU whole, as long as its header says: refuse an overlong one unread."""

    def recv(self, nr_bytes: int) -> bytearray:
        limit = max(int(self.assoc.acceptor.maximum_length or 0), REQUEST_PDU_BYTES)
        if nr_bytes > limit:
            log.warning("a PDU of %d bytes is over the limit of %d: connection closed", nr_bytes, limit)
            raise OSError(f"a PDU of {nr_bytes} bytes is over the limit of {limit}")
        return super().recv(nr_bytes)


class GuardedRequestHandler(RequestHandler):
    """Runs one connection's association to its end, in the connection's thread."""

    server: GuardedServer

    def handle(self) -> None:
        guard = self.server.guard
        assoc = self._create_association()
        assoc.dul.socket.__class__ = BoundedSocket  # same object, one method more careful
        connection = guard.find(self.request)
        if connection is None or not guard.attach(connection, assoc):
            self.server.shutdown_request(self.request)
            return
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()
        assoc.join()
        self.server.on_end(assoc)


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with :class:`ConnectionGuard` at the door."""

    daemon_threads = True
    block_on_close = False  # stopping the node never waits for a peer

    def __init__(
        self,
        ae: AE,
        address: tuple[str, int],
        ae_title: str,
        contexts: list[Any],
        ssl_context: ssl.SSLContext | None = None,
        evt_handlers: list[Any] | None = None,
        *,
        guard: ConnectionGuard,
        on_end: Callable[[Association], None],
    ) -> None:
        self.guard = guard
        self.on_end = on_end
        super().__init__(
            ae, address, ae_title, contexts, ssl_context, evt_handlers, request_handler=GuardedRequestHandler
        )

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        sock, address = self.socket.accept()
        sock.settimeout(self.guard.limits.read_timeout)
        if self.ssl_context:
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return self.guard.admit(request, str(client_address[0])) is not None

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        connection = self.guard.find(request)
        try:
            if isinstance(request, ssl.SSLSocket):
                request.do_handshake()
            self.finish_request(request, client_address)
        except Exception as exc:  # a failed handshake, a peer gone: this connection only
            log.info("connection from %s ended early: %s", client_address[0], type(exc).__name__)
            self.shutdown_request(request)
        finally:
            if connection is not None:
                self.guard.release(connection)


def serve(
    ae: AE,
    address: tuple[str, int],
    handlers: list[Any],
    context: ssl.SSLContext | None,
    guard: ConnectionGuard,
    on_end: Callable[[Association], None],
) -> GuardedServer:
    """Start accepting in a background thread; stop with ``server.shutdown()``."""
    server = ae.make_server(
        address,
        ssl_context=context,
        evt_handlers=handlers,
        server_class=GuardedServer,
        guard=guard,
        on_end=on_end,
    )
    assert isinstance(server, GuardedServer)
    ae._servers.append(server)  # as ae.start_server does: server.shutdown() removes it again
    threading.Thread(target=server.serve_forever, name="dicom-accept", daemon=True).start()
    return server


def apply_timeouts(ae: AE, settings: Settings) -> None:
    """The ACSE, DIMSE and network timeouts of the settings, for the node's SCP and its senders alike."""
    ae.acse_timeout = settings.dicom_acse_timeout_seconds
    ae.connection_timeout = settings.dicom_acse_timeout_seconds
    ae.dimse_timeout = settings.dicom_dimse_timeout_seconds
    ae.network_timeout = settings.dicom_network_timeout_seconds
