"""Helpers of the service tests: a real ``squid serve`` subprocess, metrics parsing, test images."""

from __future__ import annotations

import functools
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from numpy.typing import NDArray
from PIL import Image

from model.runtime import SquidRuntime
from model.steps import infer, prepare
from tests.net_support import free_port, metric_value

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 180.0
API_KEY = "test-key-7f3a9c"
THRESHOLD_OVERRIDE = 0.25


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60.0, **kwargs)  # type: ignore[arg-type]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.logs().splitlines() if line.strip()]

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        return metric_value(text, name, labels)


def start_server(log_path: Path, **settings: str) -> Server:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQUID_") or k == "SQUID_DATA_DIR"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update({"SQUID_LOG_LEVEL": "INFO", "SQUID_INTRA_OP_THREADS": "2", **settings})
    command = [sys.executable, "-m", "cli.main", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"squid serve exited with {process.returncode}:\n{server.logs()[-4000:]}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop_server(server)
    raise RuntimeError(f"squid serve not ready after {STARTUP_TIMEOUT_S} s:\n{server.logs()[-4000:]}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=10)


@contextmanager
def serving(log_path: Path, **settings: str) -> Iterator[Server]:
    """A ``squid serve`` with these settings for the duration of the block, stopped however it ends."""
    server = start_server(log_path, **settings)
    try:
        yield server
    finally:
        stop_server(server)


def local_score(runtime: SquidRuntime, data: bytes) -> float:
    """The score the shared pipeline gives in-process (what the server must match exactly)."""
    results, _ = infer(runtime, [prepare(data, runtime.preprocessing, 100_000_000, runtime.gate)])
    return results[0].score


# --- image helpers ---------------------------------------------------------------------------------


SAMPLE_FILM = Path(__file__).resolve().parents[2] / "samples" / "normal-IM-0372-0001.jpeg"


@functools.cache
def _sample_film() -> NDArray[np.float64]:
    return np.asarray(Image.open(SAMPLE_FILM).convert("L"), dtype=np.float64) / 255.0


def chest_like(rows: int = 320, columns: int = 288, top: int = 4095, seed: int = 0) -> NDArray[np.int64]:
    """The repository's sample chest film at ``rows`` x ``columns``, covering 0..top, with a faint
    seeded texture (so seeds differ). A real film, so it passes the domain gate's image check, and
    asymmetric (the heart), so flips and inversions show."""
    rng = np.random.default_rng(seed)
    film = Image.fromarray(_sample_film().astype(np.float32)).resize(
        (columns, rows), Image.Resampling.BILINEAR
    )
    y, x = np.mgrid[0:rows, 0:columns]
    pattern = (
        np.asarray(film, dtype=np.float64)
        + 0.04 * np.sin(x / 17.0 + seed)
        + 0.03 * (x * y) / (rows * columns)
        + 0.02 * rng.random((rows, columns))
    )
    pattern = (pattern - pattern.min()) / np.ptp(pattern)
    return np.rint(pattern * top).astype(np.int64)


def encode(image: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_gray(values: NDArray[np.generic], bits: int = 16) -> bytes:
    dtype = np.uint16 if bits == 16 else np.uint8
    return encode(Image.fromarray(np.asarray(values, dtype=dtype)))


def decode_png_b64(text: str) -> NDArray[np.uint8]:
    import base64

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))
