"""DICOM TLS on the node, driven by dcmtk's ``storescu +tls`` with certificates made here by openssl.

The node requires a client certificate signed by the test CA (``SQUID_DICOM_TLS_CA``). A caller that
connects and never starts its handshake must not hold up the others: the handshake runs in the
connection's own thread, bounded by the network timeout.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.node.node_peers import closed_by_peer, connect, wait_closed
from tests.node.orthanc_support import NODE_AE, NodeProcess

STORESCU = shutil.which("storescu")
OPENSSL = shutil.which("openssl")
pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        STORESCU is None or OPENSSL is None, reason="dcmtk's storescu or openssl not installed"
    ),
]


def openssl(*args: str, cwd: Path) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=120)


def certificates(folder: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    folder.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=squid-test-ca",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=folder)  # fmt: skip
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, subject, extensions in (("server", "/CN=127.0.0.1", ["-extfile", "server.ext"]),
                                      ("client", "/CN=STORESCU", [])):  # fmt: skip
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", f"{name}.key",
                "-out", f"{name}.csr", cwd=folder)  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-out", f"{name}.pem", *extensions, cwd=folder)  # fmt: skip
    return folder


def storescu_tls(port: int, certs: Path, image: Path, client_cert: bool = True) -> int:
    assert STORESCU is not None
    tls = ["+tls", str(certs / "client.key"), str(certs / "client.pem")] if client_cert else ["+tla"]
    command = [STORESCU, *tls, "+cf", str(certs / "ca.pem"), "-aet", "STORESCU", "-aec", NODE_AE,
               "-to", "30", "-ta", "30", "-td", "30", "127.0.0.1", str(port), str(image)]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False).returncode


def test_storescu_over_tls_stores_and_a_silent_caller_holds_up_nobody(
    tmp_path: Path, launch_node: Callable[..., NodeProcess], dx_file: Path
) -> None:
    certs = certificates(tmp_path / "certs")
    node = launch_node(
        SQUID_DICOM_TLS_CERT=str(certs / "server.pem"),
        SQUID_DICOM_TLS_KEY=str(certs / "server.key"),
        SQUID_DICOM_TLS_CA=str(certs / "ca.pem"),
        SQUID_DICOM_NETWORK_TIMEOUT_SECONDS="5",
    )
    silent = connect(node.port)  # connected, never says a word: no ClientHello
    try:
        assert storescu_tls(node.port, certs, dx_file) == 0
        assert not closed_by_peer(silent), "the silent caller was dropped before storescu ran"
        assert wait_closed([silent], 90), "a TLS handshake that never starts is timed out"
    finally:
        silent.close()
    assert node.metric("squid_node_instances_total", {"outcome": "stored"}) == 1
    assert storescu_tls(node.port, certs, dx_file, client_cert=False) != 0  # no client certificate
    plain = [str(STORESCU), "-aet", "STORESCU", "-aec", NODE_AE, "127.0.0.1", str(node.port), str(dx_file)]
    assert subprocess.run(plain, capture_output=True, timeout=120, check=False).returncode != 0
    assert node.metric("squid_node_instances_total", {"outcome": "stored"}) == 1
