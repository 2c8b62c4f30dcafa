"""The HTTP contract of the API, driven over a real uvicorn server."""

from __future__ import annotations

import re
import socket
from typing import Any

import httpx
import pytest
from dicom_factory import make_dicom
from http_support import (
    API_KEY,
    THRESHOLD_OVERRIDE,
    Server,
    chest_like,
    decode_png_b64,
    local_score,
    metric_value,
    png_gray,
)

from model.runtime import SquidRuntime

SCORE_KEYS = {"score", "is_anomalous", "threshold", "raw_score", "model", "input", "warnings", "timing_ms"}
INPUT_KEYS = {
    "format",
    "rows",
    "columns",
    "photometric_interpretation",
    "bits_stored",
    "view_position",
    "transfer_syntax",
    "transfer_syntax_name",
    "modality",
    "body_part",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "sop_class_uid",
}


@pytest.fixture(scope="module")
def dicom_bytes() -> bytes:
    return make_dicom(chest_like(top=4095), bits_stored=12, window=(2048, 4096))


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    extra = {"reasons", "warnings"} if body["error"].get("reason") == "out_of_domain" else set()
    assert set(body["error"]) == {"reason", "detail"} | extra, body
    return body["error"]


def test_probes(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


def test_model_endpoint_has_the_artifact_metadata(client: httpx.Client, local_runtime: SquidRuntime) -> None:
    body = client.get("/model").json()
    meta = local_runtime.metadata
    assert body["model_name"] == meta.model_name
    assert body["model_version"] == meta.model_version
    assert body["weights_sha256"] == meta.weights_sha256
    assert body["input_size"] == meta.input_size
    assert body["calibration"] == meta.calibration
    assert body["serving"]["threshold"] == pytest.approx(meta.threshold)
    assert body["serving"]["threshold_source"] == "artifact"


def test_multipart_dicom_scores_with_the_documented_fields(
    client: httpx.Client, dicom_bytes: bytes, local_runtime: SquidRuntime
) -> None:
    response = client.post("/score", files={"file": ("x-ray.bin", dicom_bytes, "application/octet-stream")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == SCORE_KEYS
    assert 0.0 <= body["score"] <= 1.0
    assert body["is_anomalous"] == (body["score"] >= body["threshold"])
    assert body["threshold"] == pytest.approx(local_runtime.threshold)
    assert body["score"] == local_score(local_runtime, dicom_bytes)
    assert body["model"] == {
        "name": local_runtime.metadata.model_name,
        "version": local_runtime.metadata.model_version,
        "sha256": local_runtime.metadata.weights_sha256,
    }
    info = body["input"]
    assert info["format"] == "dicom"
    assert (info["rows"], info["columns"]) == (320, 288)
    assert info["photometric_interpretation"] == "MONOCHROME2"
    assert info["bits_stored"] == 12
    assert info["view_position"] == "PA"
    assert info["transfer_syntax"] == "1.2.840.10008.1.2.1"
    for uid in ("study_instance_uid", "series_instance_uid", "sop_instance_uid"):
        assert info[uid] and info[uid].replace(".", "").isdigit()
    assert set(info) == INPUT_KEYS  # the public schema: no patient attributes
    assert set(body["timing_ms"]) == {"decode", "preprocess", "queue", "inference"}
    assert all(value >= 0 for value in body["timing_ms"].values())
    assert response.headers["x-request-id"]


@pytest.mark.parametrize("content_type", ["application/dicom", "application/octet-stream", None])
def test_raw_dicom_body(client: httpx.Client, dicom_bytes: bytes, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/score", content=dicom_bytes, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["input"]["format"] == "dicom"


def test_raw_png_and_jpeg_bodies(client: httpx.Client) -> None:
    from http_support import encode
    from PIL import Image

    values = chest_like(top=255).astype("uint8")
    for content_type, data, fmt in (
        ("image/png", png_gray(values, bits=8), "png"),
        ("image/jpeg", encode(Image.fromarray(values), "JPEG", quality=95), "jpeg"),
    ):
        response = client.post("/score", content=data, headers={"Content-Type": content_type})
        assert response.status_code == 200, response.text
        assert response.json()["input"]["format"] == fmt
        assert "content_type_mismatch" not in response.json()["warnings"]


def test_format_comes_from_the_content_not_the_declared_type(
    client: httpx.Client, dicom_bytes: bytes
) -> None:
    response = client.post("/score", content=dicom_bytes, headers={"Content-Type": "image/png"})
    assert response.status_code == 200
    body = response.json()
    assert body["input"]["format"] == "dicom"
    assert "content_type_mismatch" in body["warnings"]
    named_png = client.post("/score", files={"file": ("chest.png", dicom_bytes, "image/png")})
    assert named_png.json()["input"]["format"] == "dicom"


def test_heatmap_and_preview_are_pngs_of_the_input_geometry(client: httpx.Client, dicom_bytes: bytes) -> None:
    plain = client.post("/score", files={"file": ("a", dicom_bytes)}).json()
    assert "heatmap_png_base64" not in plain and "preview_png_base64" not in plain
    body = client.post(
        "/score", params={"heatmap": "true", "preview": "true"}, files={"file": ("a", dicom_bytes)}
    ).json()
    heat = decode_png_b64(body["heatmap_png_base64"])
    preview = decode_png_b64(body["preview_png_base64"])
    assert heat.shape == (320, 288, 3)
    assert preview.shape == (320, 288)
    assert body["score"] == plain["score"]


@pytest.mark.parametrize(
    ("kwargs", "status", "reason"),
    [
        (
            {"content": b"hello, not an image", "headers": {"Content-Type": "application/octet-stream"}},
            415,
            "unsupported_format",
        ),
        ({"files": {"file": ("x.png", b"GIF89a" + bytes(64))}}, 415, "unsupported_format"),
        ({"content": b"{}", "headers": {"Content-Type": "application/json"}}, 415, "unsupported_format"),
        ({"data": {"other": "field"}, "files": {"image": ("x.dcm", b"123")}}, 422, "missing_file"),
        ({"content": b""}, 422, "missing_file"),
        (
            {"content": b"--x\r\n", "headers": {"Content-Type": "multipart/form-data"}},
            400,
            "malformed_request",
        ),
        (
            {"content": b"\x89PNG\r\n\x1a\n" + bytes(40), "headers": {"Content-Type": "image/png"}},
            422,
            "undecodable",
        ),
    ],
)
def test_request_errors_have_a_reason_and_status(
    client: httpx.Client, kwargs: dict, status: int, reason: str
) -> None:
    response = client.post("/score", **kwargs)
    assert response.status_code == status, response.text
    assert error_of(response)["reason"] == reason


@pytest.mark.parametrize(
    ("dicom_kwargs", "reason"),
    [
        ({"modality": "SR", "pixels": None, "with_pixels": False}, "no_pixel_data"),
        ({"modality": "DX", "pixels": None, "with_pixels": False}, "no_pixel_data"),
        ({"modality": "CT"}, "modality"),
        ({"view_position": "LL"}, "view"),
        ({"body_part": "KNEE"}, "body_part"),
        ({"view_position": "", "extra": {"SeriesDescription": "CHEST LAT"}}, "view"),
        ({"view_position": None, "extra": {"ProtocolName": "Thorax lateral"}}, "view"),
    ],
)
def test_input_checks_are_422_with_their_reason(
    client: httpx.Client, dicom_kwargs: dict, reason: str
) -> None:
    """Objects without pixels are refused as such; header rules of the domain gate name their reason
    under ``out_of_domain`` (today's lateral_view / unsupported_modality / not_chest)."""
    pixels = dicom_kwargs.pop("pixels", chest_like(64, 64))
    response = client.post("/score", files={"file": ("a", make_dicom(pixels, **dicom_kwargs))})
    assert response.status_code == 422
    error = error_of(response)
    assert reason in (error["reason"], *error.get("reasons", []))


def test_truncated_compressed_dicom_is_undecodable_and_names_the_syntax(client: httpx.Client) -> None:
    from pydicom.uid import JPEG2000Lossless

    data = make_dicom(chest_like(128, 128), bits_stored=12, transfer_syntax=JPEG2000Lossless)
    response = client.post("/score", files={"file": ("a", data[: len(data) * 2 // 3])})
    assert response.status_code == 422
    error = error_of(response)
    assert error["reason"] == "undecodable"
    assert "JPEG 2000" in error["detail"]


def test_soft_findings_are_warnings(client: httpx.Client) -> None:
    data = make_dicom(chest_like(120, 400, top=4095), bits_stored=12, view_position=None)
    body = client.post("/score", files={"file": ("a", data)}).json()
    assert {"missing_view_position", "small_image", "unusual_aspect_ratio"} <= set(body["warnings"])


def test_unknown_routes_and_methods_use_the_error_shape(client: httpx.Client) -> None:
    assert error_of(client.get("/nope"))["reason"] == "not_found"
    response = client.get("/score")
    assert response.status_code == 405
    assert error_of(response)["reason"] == "method_not_allowed"
    invalid = client.post("/score", params={"heatmap": "maybe"}, content=b"x")
    assert invalid.status_code == 422
    assert error_of(invalid)["reason"] == "invalid_request"


def test_declared_content_length_over_the_limit_is_refused_before_the_body(server: Server) -> None:
    """A client announcing 10 GB gets 413 without sending (or the server reading) a byte of it."""
    request = (
        "POST /score HTTP/1.1\r\nHost: test\r\nContent-Type: application/dicom\r\n"
        f"Content-Length: {10 * 1024**3}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request)
        reply = _read_reply(sock)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b'"too_large"' in reply


def test_streamed_body_over_the_limit_is_cut_off(secured_server: Server) -> None:
    """Chunked upload without Content-Length: counted while streaming (limit 1 MB here)."""
    head = (
        "POST /score HTTP/1.1\r\nHost: test\r\nContent-Type: application/dicom\r\n"
        f"X-API-Key: {API_KEY}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = bytes(256 * 1024)
    with socket.create_connection(("127.0.0.1", secured_server.port), timeout=30) as sock:
        sock.sendall(head)
        try:
            for _ in range(8):  # 2 MB offered
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        except OSError:
            pass  # the server answered and closed while we were still sending
        reply = _read_reply(sock)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b'"too_large"' in reply


def test_upload_under_the_limit_passes_on_the_limited_server(secured_server: Server) -> None:
    data = make_dicom(chest_like(64, 64), bits_stored=12)
    with secured_server.client(headers={"X-API-Key": API_KEY}) as http:
        fits = http.post("/score", content=data, headers={"Content-Type": "application/dicom"})
        assert fits.status_code == 200
        too_big = http.post("/score", content=bytes(1024 * 1024 + 1), headers={"Content-Type": "image/png"})
    assert too_big.status_code == 413


def _read_reply(sock: socket.socket) -> bytes:
    data = b""
    try:
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            part = sock.recv(65536)
            if not part:
                break
            data += part
    except OSError:
        pass
    return data


def test_api_key_is_required_everywhere_but_probes_and_metrics(secured_server: Server) -> None:
    data = make_dicom(chest_like(64, 64), bits_stored=12)
    protected = ("/", "/static/app.js", "/docs", "/openapi.json", "/model", "/jobs/0123456789abcdef")
    with secured_server.client() as http:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert http.get(path).status_code == 200, path
        refused = [http.get(path) for path in protected] + [http.post("/score", files={"file": ("a", data)})]
        for response in refused:
            assert response.status_code == 401, response.request.url
            assert error_of(response)["reason"] == "unauthorized"
            assert response.headers["WWW-Authenticate"].startswith("Basic ")  # browsers ask for it
        wrong = {"X-API-Key": "nope"}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic !!"}
        for headers in wrong:
            assert http.post("/score", files={"file": ("a", data)}, headers=headers).status_code == 401
        bad_password = http.post("/score", files={"file": ("a", data)}, auth=("squid", "nope"))
        assert bad_password.status_code == 401
        accepted = (
            {"headers": {"X-API-Key": API_KEY}},
            {"headers": {"Authorization": f"Bearer {API_KEY}"}},
            {"auth": ("any-user", API_KEY)},
        )
        for credentials in accepted:
            assert http.post("/score", files={"file": ("a", data)}, **credentials).status_code == 200
        for path in protected[:-1]:
            assert http.get(path, auth=("any-user", API_KEY)).status_code == 200, path
        assert http.get("/static/nothing.js", auth=("any-user", API_KEY)).status_code == 404


def test_malformed_credentials_do_not_matter_without_a_key(client: httpx.Client) -> None:
    data = make_dicom(chest_like(64, 64), bits_stored=12)
    for value in ("Basic !!", "Basic", "Bearer", "Negotiate abc"):
        response = client.post("/score", files={"file": ("a", data)}, headers={"Authorization": value})
        assert response.status_code == 200, value


def test_threshold_override_from_settings(secured_server: Server) -> None:
    data = make_dicom(chest_like(64, 64), bits_stored=12)
    with secured_server.client(headers={"X-API-Key": API_KEY}) as http:
        body = http.post("/score", files={"file": ("a", data)}).json()
        model = http.get("/model").json()
    assert body["threshold"] == pytest.approx(THRESHOLD_OVERRIDE)
    assert body["is_anomalous"] == (body["score"] >= THRESHOLD_OVERRIDE)
    assert model["serving"]["threshold"] == pytest.approx(THRESHOLD_OVERRIDE)
    assert model["serving"]["threshold_source"] == "SQUID_THRESHOLD"
    assert model["serving"]["artifact_threshold"] == pytest.approx(model["threshold"])
    text = httpx.get(f"{secured_server.url}/metrics").text
    assert metric_value(text, "squid_model_threshold") == pytest.approx(THRESHOLD_OVERRIDE)


def test_metrics_exposition(server: Server, client: httpx.Client, dicom_bytes: bytes) -> None:
    before = httpx.get(f"{server.url}/metrics").text
    client.post("/score", files={"file": ("a", dicom_bytes)})
    client.post("/score", files={"file": ("a", make_dicom(chest_like(64, 64), view_position="LATERAL"))})
    text = httpx.get(f"{server.url}/metrics").text
    response = httpx.get(f"{server.url}/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    for name in (
        "squid_http_requests_total",
        "squid_http_request_duration_seconds_bucket",
        "squid_http_requests_in_flight",
        "squid_decode_duration_seconds_bucket",
        "squid_preprocess_duration_seconds_bucket",
        "squid_inference_duration_seconds_bucket",
        "squid_inference_queue_wait_seconds_bucket",
        "squid_inference_batch_size_bucket",
        "squid_anomaly_score_bucket",
        "squid_rejections_total",
        "squid_out_of_domain_total",
        "squid_domain_warnings_total",
        "squid_model_info",
        "squid_model_ready",
    ):
        assert f"\n{name}" in text, name

    def delta(name: str, labels: dict[str, str]) -> float:
        return metric_value(text, name, labels) - metric_value(before, name, labels)

    assert delta("squid_http_requests_total", {"endpoint": "/score", "method": "POST", "status": "200"}) == 1
    assert delta("squid_http_requests_total", {"endpoint": "/score", "method": "POST", "status": "422"}) == 1
    assert delta("squid_rejections_total", {"reason": "out_of_domain"}) == 1
    assert delta("squid_out_of_domain_total", {"reason": "view"}) == 1
    assert delta("squid_decode_duration_seconds_count", {"format": "dicom"}) == 1
    version = httpx.get(f"{server.url}/readyz").json()["model_version"]
    assert delta("squid_anomaly_score_count", {"model_version": version}) == 1
    assert metric_value(text, "squid_model_ready") == 1
    assert metric_value(text, "squid_model_info", {"model_version": version}) == 1
    httpx.get(f"{server.url}/no/such/path/12345")
    after = httpx.get(f"{server.url}/metrics").text
    assert "/no/such/path" not in after  # raw paths never become label values
    assert metric_value(after, "squid_http_requests_total", {"endpoint": "unmatched", "status": "404"}) >= 1


def test_openapi_documents_the_score_endpoint(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/score"]["post"]
    assert {"multipart/form-data", "application/dicom", "image/png", "image/jpeg"} <= set(
        operation["requestBody"]["content"]
    )
    assert {"200", "413", "415", "422"} <= set(operation["responses"])


def test_docs_page_needs_no_internet(client: httpx.Client) -> None:
    """Swagger UI's files come from this server, not a CDN: hospital networks are usually closed."""
    page = client.get("/docs")
    assert page.status_code == 200
    references = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", page.text)
    assert references
    assert not [r for r in references if "//" in r], references
    types = {}
    for reference in references:
        asset = client.get(reference)
        assert asset.status_code == 200, reference
        types[reference.rsplit(".", 1)[-1]] = asset.headers["content-type"]
    assert types["js"].startswith("text/javascript") and types["css"].startswith("text/css")
    assert client.get("/docs/assets/nothing.js").status_code == 404


def test_page_and_static_files(client: httpx.Client) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert 'type="file"' in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200
