"""The node's DICOM port against hostile and careless peers (issue 25, defects 2, 13 and 14).

Real ``squid listen`` processes and real sockets: sockets held open without a byte, sockets stuck in
the middle of a PDU, a PDU longer than the node accepts, unknown calling and called AE titles, and
where the node's metrics listen. Waits are hang guards, never performance assertions.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.jobs.jobs_support import wait_for
from tests.node.node_peers import (
    HALF_PDU,
    OTHER_HOST,
    Attacker,
    closed_by_peer,
    connect,
    instances,
    store,
    wait_closed,
)
from tests.node.orthanc_support import NODE_AE, NodeProcess, echo

pytestmark = pytest.mark.timeout(300)

WAIT_S = 120.0


def test_the_allowed_pacs_keeps_storing_while_an_attacker_holds_sockets_from_its_address(
    launch_node: Callable[..., NodeProcess], dx_file: Path
) -> None:
    # The probe: 12 silent sockets and 10 stuck half-way through a PDU, renewed as soon as the node
    # drops one, from the PACS's own address (the hardest case: no per-address limit can tell them apart).
    node = launch_node(SQUID_DICOM_ACSE_TIMEOUT_SECONDS="5", SQUID_DICOM_NETWORK_TIMEOUT_SECONDS="5")
    images = instances(dx_file, 10)
    with Attacker(node.port, "127.0.0.1", silent=12, half=10) as attacker:
        wait_for(lambda: attacker.opened >= 22, WAIT_S, "the attacker's sockets")
        statuses = [status for image in images for status in store(node.port, [image])]
        held = attacker.held()
    assert statuses == [0] * 10
    assert held > 0, "the attacker was not holding sockets while the PACS stored"


def test_a_half_sent_pdu_and_a_silent_socket_are_closed_by_the_timeouts(
    launch_node: Callable[..., NodeProcess],
) -> None:
    node = launch_node(SQUID_DICOM_ACSE_TIMEOUT_SECONDS="3", SQUID_DICOM_NETWORK_TIMEOUT_SECONDS="3")
    silent = connect(node.port)
    half = connect(node.port, first_bytes=HALF_PDU)
    try:
        assert wait_closed([silent, half], 90), "the node kept a socket open past its timeouts"
    finally:
        silent.close()
        half.close()
    assert echo("127.0.0.1", node.port, NODE_AE)


def test_one_peer_holds_at_most_its_share_of_connections_and_others_are_served(
    launch_node: Callable[..., NodeProcess], dx_file: Path
) -> None:
    node = launch_node(
        SQUID_DICOM_MAX_CONNECTIONS_PER_PEER="4",
        SQUID_DICOM_MAX_CONNECTIONS="6",
        SQUID_DICOM_MAX_ASSOCIATIONS="4",
    )
    flood = [connect(node.port, OTHER_HOST) for _ in range(12)]
    try:
        wait_for(lambda: sum(not closed_by_peer(s) for s in flood) == 4, WAIT_S, "the per-peer cap")
        assert all(closed_by_peer(s) for s in flood[:8]), "the oldest idle connections make room"
        assert store(node.port, instances(dx_file, 1)) == [0]
        assert sum(not closed_by_peer(s) for s in flood) <= 4
    finally:
        for sock in flood:
            sock.close()
    assert node.metric("squid_node_connections_total", {"outcome": "evicted", "reason": "peer_limit"}) >= 8


def test_a_peer_whose_connections_are_all_associated_is_refused_and_slots_are_capped(
    launch_node: Callable[..., NodeProcess],
) -> None:
    from pynetdicom import AE

    node = launch_node(
        SQUID_DICOM_MAX_CONNECTIONS_PER_PEER="2",
        SQUID_DICOM_MAX_CONNECTIONS="6",
        SQUID_DICOM_MAX_ASSOCIATIONS="3",
    )

    def associate(source: str) -> Any:
        ae = AE(ae_title="ECHOSCU")
        ae.add_requested_context("1.2.840.10008.1.1")
        ae.acse_timeout = ae.network_timeout = 60
        return ae.associate("127.0.0.1", node.port, ae_title=NODE_AE, bind_address=(source, 0))

    held = [associate(OTHER_HOST), associate(OTHER_HOST), associate("127.0.0.1")]
    try:
        assert all(assoc.is_established for assoc in held)
        refused = connect(node.port, OTHER_HOST)  # nothing of this peer's is idle: no room
        assert wait_closed([refused], WAIT_S)
        refused.close()
        assert not associate("127.0.0.3").is_established  # all three slots taken
        held.pop().release()
        wait_for(lambda: echo("127.0.0.1", node.port, NODE_AE), WAIT_S, "a freed slot")
    finally:
        for assoc in held:
            assoc.release()
    assert node.metric("squid_node_connections_total", {"outcome": "refused", "reason": "peer_limit"}) == 1
    no_slot = {"outcome": "rejected", "reason": "no_association_slot"}
    assert node.metric("squid_node_associations_total", no_slot) == 1


def test_a_pdu_longer_than_the_maximum_closes_the_connection_before_it_is_read(
    launch_node: Callable[..., NodeProcess],
) -> None:
    node = launch_node(SQUID_DICOM_MAX_PDU_BYTES="65536")
    sock = connect(node.port, first_bytes=struct.pack(">BBL", 0x01, 0x00, 0x7FFFFFFF))
    chunk = b"\x00" * (1 << 20)
    with pytest.raises(OSError):  # reset or broken pipe: the node closed it, it did not buffer 2 GB
        for _ in range(512):
            sock.sendall(chunk)
    sock.close()
    assert echo("127.0.0.1", node.port, NODE_AE)


def test_an_empty_allow_list_admits_nobody_and_the_called_title_must_be_ours(
    launch_node: Callable[..., NodeProcess],
) -> None:
    closed = launch_node(SQUID_DICOM_ALLOWED_AES="[]")
    assert not echo("127.0.0.1", closed.port, NODE_AE, calling="ECHOSCU")
    rejected = {"outcome": "rejected", "reason": "calling_ae_not_allowed"}
    assert closed.metric("squid_node_associations_total", rejected) == 1
    assert "no calling AE title may associate" in closed.log()

    open_node = launch_node(SQUID_DICOM_ALLOWED_AES="", SQUID_DICOM_ALLOW_ANY_AE="true")
    assert echo("127.0.0.1", open_node.port, NODE_AE, calling="ANY_MODALITY")
    assert not echo("127.0.0.1", open_node.port, "NOTSQUID", calling="ANY_MODALITY")
    wrong = {"outcome": "rejected", "reason": "called_ae_wrong"}
    assert open_node.metric("squid_node_associations_total", wrong) == 1


def test_node_metrics_listen_on_the_node_host_unless_set(launch_node: Callable[..., NodeProcess]) -> None:
    node = launch_node()  # SQUID_DICOM_HOST is 127.0.0.1
    port = node.env["SQUID_DICOM_METRICS_PORT"]
    assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{OTHER_HOST}:{port}/metrics", timeout=10)

    moved = launch_node(SQUID_DICOM_METRICS_HOST=OTHER_HOST)
    port = moved.env["SQUID_DICOM_METRICS_PORT"]
    assert httpx.get(f"http://{OTHER_HOST}:{port}/metrics", timeout=10).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)


def test_settings_refuse_an_open_node_with_an_allow_list_and_caps_above_the_total(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from service.settings import Settings

    monkeypatch.setenv("SQUID_DICOM_ALLOWED_AES", json.dumps(["PACS"]))
    monkeypatch.setenv("SQUID_DICOM_ALLOW_ANY_AE", "true")
    with pytest.raises(ValueError, match="not both"):
        Settings()
    monkeypatch.delenv("SQUID_DICOM_ALLOW_ANY_AE")
    monkeypatch.setenv("SQUID_DICOM_MAX_CONNECTIONS_PER_PEER", "100")
    with pytest.raises(ValueError, match="must not exceed"):
        Settings()
