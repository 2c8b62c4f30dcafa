"""Bounded fuzzing of ``POST /score``: malformed bodies, content types, headers and raw HTTP.

Whatever arrives, the answer is a 4xx with the error body (or a 200 for a lucky valid image), never a
500, and the server keeps answering afterwards.
"""

from __future__ import annotations

import socket

import httpx
import pytest
from dicom_factory import make_dicom
from http_support import Server, chest_like, encode, metric_value, png_gray
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.uid import JPEG2000Lossless, RLELossless

V = chest_like(48, 40, top=4095)
SAMPLES = [
    png_gray(V),
    png_gray(V // 16, bits=8),
    encode(Image.fromarray((V // 16).astype("uint8")), "JPEG", quality=80),
    make_dicom(V, bits_stored=12),
    make_dicom(V, bits_stored=12, transfer_syntax=RLELossless),
    make_dicom(V, bits_stored=12, transfer_syntax=JPEG2000Lossless),
    make_dicom(V, bits_stored=12, no_file_meta=True),
    make_dicom(V, bits_stored=12, photometric="MONOCHROME1", window=[(1, 0), (2000, 100)]),
]
# Printable ASCII without surrounding blanks (what an HTTP client can send at all).
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60).map(str.strip)
CONTENT_TYPES = st.one_of(
    st.sampled_from(
        [
            "application/dicom",
            "image/png",
            "image/jpeg",
            "application/octet-stream",
            "multipart/form-data",
            "multipart/form-data; boundary=",
            "multipart/form-data; boundary=zzz",
            'multipart/form-data; boundary="a b"',
            "multipart/mixed; boundary=zzz",
            "text/plain",
            "application/json",
            "application/x-www-form-urlencoded",
            "image/png; charset=utf-8",
            ";;;",
        ]
    ),
    HEADER_TEXT,
)


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    """A real sample cut short, with bytes flipped, or with garbage spliced in."""
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    operation = draw(st.sampled_from(["truncate", "flip", "splice", "as_is"]))
    if operation == "truncate":
        return bytes(data[: draw(st.integers(0, len(data)))])
    if operation == "flip":
        for _ in range(draw(st.integers(1, 40))):
            position = draw(st.integers(0, len(data) - 1))
            data[position] = draw(st.integers(0, 255))
        return bytes(data)
    if operation == "splice":
        position = draw(st.integers(0, len(data)))
        return bytes(data[:position]) + draw(st.binary(max_size=300)) + bytes(data[position:])
    return bytes(data)


@st.composite
def multipart(draw: st.DrawFn) -> tuple[bytes, str]:
    """A hand-built multipart body with odd boundaries, names, headers and endings."""
    boundary = draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=30))
    declared = draw(st.sampled_from([boundary, boundary + "x", ""]))
    parts = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(["file", "image", "", 'file"; filename="x', "FILE"]))
        disposition = draw(
            st.sampled_from(
                [
                    f'form-data; name="{name}"; filename="x.dcm"',
                    f'form-data; name="{name}"',
                    "form-data",
                    "attachment",
                    "",
                ]
            )
        )
        payload = draw(st.one_of(mangled(), st.binary(max_size=200)))
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n"
        parts.append(head.encode() + payload + b"\r\n")
    ending = draw(st.sampled_from([f"--{boundary}--\r\n", f"--{boundary}", "", "--"]))
    content_type = f"multipart/form-data; boundary={declared}" if declared else "multipart/form-data"
    return b"".join(parts) + ending.encode(), content_type


@st.composite
def requests(draw: st.DrawFn) -> dict:
    kind = draw(st.sampled_from(["raw", "raw", "multipart", "httpx_files"]))
    headers: dict[str, str] = {}
    request: dict = {"params": {}}
    if kind == "multipart":
        body, headers["Content-Type"] = draw(multipart())
        request["content"] = body
    elif kind == "httpx_files":
        field = draw(st.sampled_from(["file", "file", "other"]))
        request["files"] = {field: (draw(HEADER_TEXT), draw(st.one_of(mangled(), st.binary(max_size=500))))}
    else:
        request["content"] = draw(st.one_of(mangled(), st.binary(max_size=2000)))
        content_type = draw(st.one_of(st.none(), CONTENT_TYPES))
        if content_type is not None:
            headers["Content-Type"] = content_type
    for name in ("X-API-Key", "Authorization", "X-Request-ID", "Content-Encoding", "Accept", "Expect"):
        if draw(st.booleans()) and draw(st.booleans()):
            headers[name] = draw(HEADER_TEXT)
    for name in ("heatmap", "preview"):
        if draw(st.booleans()):
            request["params"][name] = draw(st.one_of(st.sampled_from(["true", "false", "1"]), HEADER_TEXT))
    request["headers"] = headers
    return request


@pytest.fixture(scope="module")
def fuzz_client(server: Server) -> httpx.Client:
    with server.client() as http:
        yield http


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
)
@given(request=requests())
def test_score_never_answers_500(fuzz_client: httpx.Client, request: dict) -> None:
    response = fuzz_client.post("/score", **request)
    event(f"status {response.status_code}")
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code != 200:
        error = response.json()["error"]
        assert error["reason"] and isinstance(error["detail"], str)


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    head=st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda line, headers: line + b"\r\n" + headers + b"\r\n\r\n",
            st.sampled_from(
                [b"POST /score HTTP/1.1", b"POST /score HTTP/1.0", b"GET / HTTP/1.1", b"POST /score"]
            ),
            st.binary(max_size=200),
        ),
    )
)
def test_garbage_http_does_not_hurt_the_server(server: Server, head: bytes) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        try:
            sock.sendall(head)
            sock.shutdown(socket.SHUT_WR)
            reply = sock.recv(4096)
        except OSError:
            return
    assert not reply.startswith(b"HTTP/1.1 500")


def test_server_is_healthy_after_fuzzing_and_counted_no_500(server: Server) -> None:
    assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200
    assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 200
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    assert metric_value(text, "squid_http_requests_total", {"status": "500"}) == 0
    assert '"unhandled error"' not in server.logs()
