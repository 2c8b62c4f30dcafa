"""The container image really builds and serves what docker-compose.yml runs.

The ``cpu`` target is built with buildah on a debootstrap stand-in for the official Python base
(tests/deploy/image_support.py), then every compose service built from it runs from the image as the
image's user, with the command, environment, volumes and health check that ``docker compose config``
resolves from docker-compose.yml: a drift between the compose file and the image fails here. A
redis-server of the test's own stands in for the compose ``redis`` service; services that need
something else the test does not provide are left out (and named in the health check test).

The API must score a DICOM and a JPEG exactly as ``squid score`` does outside the image, and the
worker must score a batch job submitted through that API, writing its results as the image's user.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from deploy_support import REPO, load_script
from image_support import (
    REDIS_PORT,
    BuiltImage,
    HostNetwork,
    ServiceContainer,
    apt_mirror,
    base_image,
    build_image,
    buildah,
    compose_config,
    listening_ports,
    missing_tools,
    redis_services,
    remove_image,
    runnable,
    start_order,
    volume_specs,
    wait_healthy,
)

from tests.jobs.jobs_support import RedisServer, run_cli

pytestmark = pytest.mark.timeout(2400)  # a hang guard: a cold run debootstraps and builds first

SAMPLES = REPO / "samples"
SCORED = (
    (SAMPLES / "normal-IM-0372-0001-MONOCHROME1.dcm", "application/dicom"),
    (SAMPLES / "pneumonia-person1048_bacteria_2982.jpeg", "image/jpeg"),
)
JOB_FOLDER = "night-export"
JOB_FILES = sorted(SAMPLES.glob("*.dcm")) + sorted(SAMPLES.glob("*.jpeg"))
STARTUP_TIMEOUT_S = 300.0  # a hang guard; about 30 s here
API_COMMAND = ["squid", "serve"]
WORKER_COMMAND = ["squid", "worker"]


@pytest.fixture(scope="module")
def image() -> Iterator[BuiltImage]:
    missing = missing_tools()
    if missing:
        pytest.skip(
            f"cannot build the image here, missing: {', '.join(missing)} "
            "(scripts/test.sh installs buildah and debootstrap with apt-get when run as root)"
        )
    name = f"localhost/squid-cxr:test-{uuid.uuid4().hex[:10]}"
    built = build_image(base_image(), name)
    print(f"\nimage {name}: built in {built.build_seconds:.0f} s, {built.size}")
    try:
        yield built
    finally:
        remove_image(name)


@dataclass
class ImageStack:
    image: BuiltImage
    services: dict[str, ServiceContainer]
    left_out: dict[str, str]
    network: HostNetwork
    import_dir: Path
    results_dir: Path

    def running(self, command: list[str]) -> ServiceContainer:
        """The compose service whose command starts with ``command`` (compose names may change)."""
        found = [s for s in self.services.values() if s.command()[: len(command)] == command]
        assert len(found) == 1, f"expected one service running {command}, found {[s.name for s in found]}"
        return found[0]

    @property
    def api_url(self) -> str:
        api = self.running(API_COMMAND)
        (published,) = api.spec["ports"]
        return f"http://127.0.0.1:{self.network.ports[api.name][int(published['target'])]}"


def _image_owner(image: BuiltImage) -> tuple[int, int]:
    user, _, group = image.user.partition(":")
    assert user.isdigit(), f"the image's USER should be numeric (Kubernetes runAsNonRoot): {image.user!r}"
    return int(user), int(group or user)


def _job_folder(import_dir: Path) -> None:
    folder = import_dir / JOB_FOLDER
    folder.mkdir(parents=True)
    for path in JOB_FILES:
        shutil.copyfile(path, folder / path.name)
    (folder / "notes.txt").write_text("not an image\n", encoding="utf-8")
    for path in [import_dir, folder, *folder.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.fixture(scope="module")
def stack(image: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageStack]:
    workdir = tmp_path_factory.mktemp("image-stack")
    import_dir, results_dir, models_dir = workdir / "import", workdir / "results", workdir / "models"
    _job_folder(import_dir)
    owner = _image_owner(image)
    for folder in (results_dir, models_dir):
        folder.mkdir()
    os.chown(results_dir, *owner)  # docs/deployment.md: a host path for results is chowned to 10001
    config = compose_config(
        {
            "SQUID_IMPORT_DIR": str(import_dir),
            "SQUID_RESULTS_VOLUME": str(results_dir),
            "SQUID_MODELS_DIR": str(models_dir),
        }
    )
    services_to_run, left_out = runnable(config)
    redis = RedisServer(workdir / "redis", persistent=False).start()
    network = HostNetwork()
    for name in redis_services(config):
        network.listen(name, REDIS_PORT, redis.port)
    for name, spec in services_to_run.items():
        for port in sorted(listening_ports(spec)):
            network.listen(name, port)
    services: dict[str, ServiceContainer] = {}
    token, image_env = uuid.uuid4().hex[:8], image.env
    try:
        for wave in start_order(services_to_run):
            for name in wave:
                container = buildah(
                    "from", "--pull=never", "--name", f"squid-test-{token}-{name}", image.name
                )
                service = ServiceContainer(
                    name,
                    services_to_run[name],
                    image_env,
                    container,
                    network,
                    volume_specs(services_to_run[name], workdir, owner),
                    workdir / f"{name}.log",
                )
                services[name] = service
                service.start()
            for name in wave:
                wait_healthy(services[name], STARTUP_TIMEOUT_S)
        yield ImageStack(image, services, left_out, network, import_dir, results_dir)
    except BaseException:
        for service in services.values():
            print(f"---- {service.name} log ----\n{service.logs()}")
        raise
    finally:
        for service in reversed(list(services.values())):
            service.stop()
        redis.kill()


def squid_score_outside(paths: list[Path]) -> dict[str, float]:
    """``squid score --json`` of this checkout's environment, with no SQUID_* setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQUID_")}
    done = run_cli(env, "score", "--json", *map(str, paths))
    assert done.returncode == 0, done.stdout + done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {Path(record["file"]).name: float(record["score"]) for record in records}


# ---- tests ---------------------------------------------------------------------------------------------


def test_every_service_of_the_image_passes_its_compose_health_check(stack: ImageStack) -> None:
    assert stack.running(API_COMMAND) and stack.running(WORKER_COMMAND)
    for name, reason in stack.left_out.items():
        print(f"left out {name}: {reason}")
    for service in stack.services.values():
        assert service.exited() is None, f"{service.name} exited:\n{service.logs()}"
        assert service.healthy(), f"{service.name}: compose health check fails:\n{service.logs()}"


def test_services_run_as_the_images_non_root_user(stack: ImageStack) -> None:
    uid, gid = _image_owner(stack.image)
    assert uid != 0 and gid != 0
    for service in stack.services.values():
        done = service.exec(["id", "-u"])
        assert done.returncode == 0 and done.stdout.strip() == str(uid), (
            service.name,
            done.stdout,
            done.stderr,
        )


def test_the_image_carries_no_training_stack_compilers_or_test_tools(stack: ImageStack) -> None:
    api = stack.running(API_COMMAND)
    probe = (
        "import importlib.util as u; print([m for m in ('torch', 'onnx', 'pytest', 'pip') if u.find_spec(m)])"
    )
    modules = api.exec(["python", "-c", probe])
    assert modules.returncode == 0 and modules.stdout.strip() == "[]", modules.stdout + modules.stderr
    compilers = api.exec(["sh", "-c", "command -v gcc cc c++ make || true"])
    assert compilers.stdout.strip() == "", compilers.stdout


def test_api_scores_dicom_and_jpeg_as_squid_score_does_outside(stack: ImageStack) -> None:
    ready = httpx.get(f"{stack.api_url}/readyz", timeout=60)
    assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
    expected = squid_score_outside([path for path, _ in SCORED])
    for path, content_type in SCORED:
        response = httpx.post(
            f"{stack.api_url}/score",
            content=path.read_bytes(),
            headers={"Content-Type": content_type},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["score"] == pytest.approx(expected[path.name], abs=1e-6), path.name
        assert result["model"]["version"] == ready.json()["model_version"]


def test_worker_scores_a_batch_job_submitted_through_the_api(stack: ImageStack) -> None:
    created = httpx.post(f"{stack.api_url}/jobs", json={"path": JOB_FOLDER}, timeout=60)
    assert created.status_code == 202, created.text
    job = load_script("native_stack").wait_for_job(stack.api_url, created.json()["id"], timeout=300)
    assert job["state"] == "succeeded", job
    assert (job["scored"], job["skipped"], job["failed"]) == (len(JOB_FILES), 1, 0), job

    expected = squid_score_outside(JOB_FILES)
    results = httpx.get(
        f"{stack.api_url}/jobs/{job['id']}/results",
        params={"format": "jsonl", "level": "instance"},
        timeout=60,
    )
    assert results.status_code == 200, results.text
    rows = {Path(row["path"]).name: row for row in map(json.loads, results.text.splitlines())}
    for name, score in expected.items():
        assert rows[name]["status"] == "scored", rows[name]
        assert rows[name]["score"] == pytest.approx(score, abs=1e-6), name
    uid, _ = _image_owner(stack.image)
    written = [p for p in stack.results_dir.rglob("*") if p.is_file()]
    assert written and {p.stat().st_uid for p in written} == {uid}, "results are written by the image's user"


# ---- how the test reads compose and the host (no image needed) ----------------------------------------


def test_the_services_to_run_are_read_from_compose_generically(tmp_path: Path) -> None:
    """Services of the image are found by build target or image name, new ones included; those that
    need a service other than Redis are left out with the reason; other images are never run."""
    config = compose_config({"SQUID_IMPORT_DIR": str(tmp_path), "SQUID_MODELS_DIR": str(tmp_path)})
    api = config["services"]["api"]
    config["services"]["listener"] = {**api, "build": None, "command": ["squid", "listen"]}
    config["services"]["router"] = {**api, "depends_on": {"pacs": {"condition": "service_started"}}}
    config["services"]["pacs"] = {"image": "orthancteam/orthanc:24.1.2"}
    to_run, left_out = runnable(config)
    assert set(to_run) == {"api", "worker", "listener"}
    assert set(left_out) == {"router"} and "pacs" in left_out["router"]
    assert redis_services(config) == {"redis"}


def test_host_network_translates_only_compose_network_addresses() -> None:
    network = HostNetwork()
    network.listen("redis", REDIS_PORT, 41000)
    network.listen("api", 8000, 42000)
    cases = {
        "redis://redis:6379/0": "redis://127.0.0.1:41000/0",
        "http://127.0.0.1:8000/readyz": "http://127.0.0.1:42000/readyz",
        "8000": "42000",
        "0.0.0.0": "127.0.0.1",
        "2": "2",
        "/data/results": "/data/results",
        "redis://other-redis:6379/0": "redis://other-redis:6379/0",
    }
    assert {value: network.translate("api", value) for value in cases} == cases
    assert network.translate("worker", "8000") == "8000", "another service's port is not this one's"


def test_apt_mirror_is_read_from_deb822_and_one_line_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb-src deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n",
        encoding="utf-8",
    )
    assert apt_mirror("bookworm", tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb [arch=amd64] http://old.example/debian bookworm main\n", encoding="utf-8"
    )
    assert apt_mirror("bookworm", tmp_path) == "http://old.example/debian"
    assert apt_mirror("trixie", tmp_path) == "http://deb.debian.org/debian"
