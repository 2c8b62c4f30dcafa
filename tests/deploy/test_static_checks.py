"""What CI can check without a Docker engine: compose files, the Dockerfile, Prometheus config and
rules (with their unit tests), Grafana provisioning, and the settings documentation.

A check whose tool is missing is skipped with the install line CI uses (deploy_support.INSTALL_HINT).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import (
    COMPOSE_FILE,
    DASHBOARD,
    DEPLOY,
    DOCS,
    ENV_EXAMPLE,
    INSTALL_HINT,
    PROMETHEUS_DIR,
    REPO,
    compose_v1,
    compose_v2,
    load_script,
    run,
    tool,
)

from service.settings import Settings

PROFILES = [pytest.param([], id="default"), pytest.param(["--profile", "gpu"], id="gpu")]
SETTINGS = Settings.model_fields
SQUID_SERVICES = ("api", "worker", "worker-gpu")


def _require(found: Any, name: str) -> Any:
    if not found:
        pytest.skip(f"{name} is not installed (CI: {INSTALL_HINT[name]})")
    return found


def env_name(field: str) -> str:
    return f"SQUID_{field.upper()}"


def documented_default(field: str) -> str:
    default = SETTINGS[field].default
    return "unset" if default is None else str(default)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as Compose v2 renders it with no variable set (every profile, long-form volumes)."""
    _require(compose_v2(), "compose v2")
    return dict(load_script("native_stack").load_compose(COMPOSE_FILE, {}))


def mount(service: dict[str, Any], target: str) -> dict[str, Any]:
    """The one volume of a rendered service mounted at ``target``."""
    found = [v for v in service["volumes"] if v["target"] == target]
    assert len(found) == 1, (target, service["volumes"])
    return dict(found[0])


# ---- compose ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_compose_v1_validates(profile: list[str]) -> None:
    binary = _require(compose_v1(), "docker-compose v1")
    result = run([binary, "-f", str(COMPOSE_FILE), *profile, "config", "-q"])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("profile", PROFILES)
def test_compose_v2_validates(profile: list[str]) -> None:
    argv = _require(compose_v2(), "compose v2")
    result = run([*argv, "-f", str(COMPOSE_FILE), *profile, "config", "-q"])
    assert result.returncode == 0, result.stdout + result.stderr


OVERRIDES = {
    "pacs-nfs": {"PACS_NFS_SERVER": "10.0.0.20", "PACS_NFS_PATH": "/exports/pacs"},
    "pacs-smb": {"PACS_SMB_SHARE": "//files/pacs", "PACS_SMB_USER": "svc", "PACS_SMB_PASSWORD": "secret"},
}


def _compose_tools() -> list[tuple[str, list[str] | None]]:
    v1 = compose_v1()
    return [("docker-compose v1", [v1] if v1 else None), ("compose v2", compose_v2())]


@pytest.mark.parametrize("override", sorted(OVERRIDES))
def test_pacs_share_overrides_validate(override: str) -> None:
    """The NFS/SMB override files (docs/deployment.md) merge into the stack, /data/import read-only."""
    tools = [(name, argv) for name, argv in _compose_tools() if argv]
    if not tools:
        _require(None, "compose v2")
    files = ["-f", str(COMPOSE_FILE), "-f", str(DEPLOY / "compose" / f"{override}.yml")]
    for name, argv in tools:
        env = OVERRIDES[override] | _path_env()
        result = run([*argv, *files, "--profile", "gpu", "config"], env=env)
        assert result.returncode == 0, f"{name}: {result.stderr}"
        merged = yaml.safe_load(result.stdout)
        for service in SQUID_SERVICES:
            mounts = merged["services"][service]["volumes"]
            imports = [
                m
                for m in mounts
                if (m["target"] if isinstance(m, dict) else m.split(":")[1]) == "/data/import"
            ]
            assert len(imports) == 1, (name, service, mounts)
            mount = imports[0]
            assert mount.get("read_only") if isinstance(mount, dict) else mount.endswith(":ro"), (
                name,
                service,
            )
            source = mount["source"] if isinstance(mount, dict) else mount.split(":")[0]
            assert source == "pacs-export", (name, service, mount)


def test_compose_v2_resolves_like_the_native_stack(tmp_path: Path) -> None:
    """The native stack's reading of the compose file (through Compose, with the variables it is
    given) gives the api and worker exactly the commands and variables Compose v2 gives them."""
    argv = _require(compose_v2(), "compose v2")
    ns = load_script("native_stack")
    env_file = tmp_path / "site.env"
    env_file.write_text("# a site's settings\nSQUID_THRESHOLD=0.42\nSQUID_MAX_BATCH=8\n", encoding="utf-8")
    variables = {"SQUID_ENV_FILE": str(env_file), "SQUID_API_WORKERS": "3", "SQUID_WORKER_CONCURRENCY": "2"}
    result = run([*argv, "-f", str(COMPOSE_FILE), "config", "--format", "json"], env=variables | _path_env())
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)["services"]
    ours = ns.load_compose(COMPOSE_FILE, variables)
    for name in ("api", "worker"):
        assert resolved[name]["command"] == ours["services"][name]["command"], name
        assert resolved[name]["environment"] == ns.service_environment(ours, name), name
    assert resolved["api"]["environment"]["SQUID_THRESHOLD"] == "0.42"
    assert resolved["api"]["environment"]["SQUID_WORKERS"] == "3"
    assert resolved["worker"]["command"][-1] == "2"


def _path_env() -> dict[str, str]:
    import os

    return {key: os.environ[key] for key in ("PATH", "HOME") if key in os.environ}


def test_every_service_is_health_checked_and_gated(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= {"api", "worker", "worker-gpu", "redis", "prometheus", "grafana"}
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert condition["condition"] == "service_healthy", (name, dependency)
    assert "redis" in services["api"]["depends_on"]
    assert "redis" in services["worker"]["depends_on"]
    assert "prometheus" in services["grafana"]["depends_on"]


def test_squid_settings_in_compose_exist_and_are_never_empty(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A typo (SQUID_WORKER_METRIC_PORT) is silently ignored by the settings; an empty value fails
    validation (SQUID_THRESHOLD=) or means the current folder (SQUID_MODEL_PATH=)."""
    import os

    known = {env_name(field) for field in SETTINGS}
    for name in SQUID_SERVICES:
        environment = compose["services"][name]["environment"]
        for key in [k for k in os.environ if k.startswith("SQUID_")]:
            monkeypatch.delenv(key)
        for key, value in environment.items():
            if key.startswith("SQUID_"):
                assert key in known, f"{name}: {key} is not a setting of service/settings.py"
                monkeypatch.setenv(key, str(value))
            assert str(value) != "", f"{name}: {key} is empty"
        Settings()  # the container's settings validate


def test_compose_layout(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert services["api"]["build"]["target"] == "cpu" and services["worker-gpu"]["build"]["target"] == "gpu"
    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    for name in SQUID_SERVICES:
        assert mount(services[name], "/data/import").get("read_only"), "the PACS share is mounted read-only"
        results = mount(services[name], "/data/results")
        assert results["source"] == "results", "results are shared by the API and the workers"
        assert services[name]["environment"]["SQUID_BROKER_URL"] == "redis://redis:6379/0"
    grafana = services["grafana"]["environment"]
    assert (
        grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and grafana["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    )


def test_prometheus_scrapes_the_ports_the_services_listen_on(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    api_port = compose["services"]["api"]["environment"]["SQUID_PORT"]
    assert jobs["squid-api"]["static_configs"][0]["targets"] == [f"api:{api_port}"]
    worker_sd = jobs["squid-worker"]["dns_sd_configs"][0]
    for name in ("worker", "worker-gpu"):
        assert name in worker_sd["names"]
        assert str(worker_sd["port"]) == compose["services"][name]["environment"]["SQUID_WORKER_METRICS_PORT"]
    node_port = compose["services"]["listener"]["environment"]["SQUID_DICOM_METRICS_PORT"]
    assert jobs["squid-node"]["static_configs"][0]["targets"] == [f"listener:{node_port}"]
    config_mount = mount(compose["services"]["prometheus"], "/etc/prometheus")
    assert config_mount["source"] == str(PROMETHEUS_DIR) and config_mount["read_only"]


# ---- Dockerfile -----------------------------------------------------------------------------------------


def test_hadolint() -> None:
    binary = _require(tool("hadolint"), "hadolint")
    result = run([binary, "--config", str(REPO / ".hadolint.yaml"), "Dockerfile"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_facts() -> None:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, flags=re.MULTILINE | re.IGNORECASE)
    assert stages == ["build", "cpu", "build-gpu", "gpu"]
    assert len(re.findall(r"^USER 10001:10001$", text, flags=re.MULTILINE)) == 2, "both runtimes run non-root"
    assert len(re.findall(r"^HEALTHCHECK .* CMD \[\"squid-healthcheck\"\]$", text, flags=re.MULTILINE)) == 2
    assert "onnxruntime-gpu==" in text and "pip uninstall -y onnxruntime" in text
    assert re.search(r"cuda:13\.\S*cudnn-runtime", text), "onnxruntime-gpu wheels link CUDA 13 + cuDNN 9"
    assert "torch" not in re.sub(r"#.*", "", text), "no torch in the images"
    assert not re.search(r"(API_KEY|PASSWORD|SECRET|TOKEN)\s*=", text), "no secrets baked in"
    ignored = (REPO / ".dockerignore").read_text(encoding="utf-8").split()
    for entry in (".venv", ".git", "runs", "tests", "local-data", "*.ckpt", "data"):
        assert entry in ignored, f".dockerignore misses {entry}"


def test_healthcheck_script(tmp_path: Path) -> None:
    """squid-healthcheck exits 1 on a refused connection and names the URL."""
    import socket
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run([sys.executable, str(DEPLOY / "healthcheck.py"), f"http://127.0.0.1:{port}/healthz"])
    assert result.returncode == 1 and f"127.0.0.1:{port}" in result.stderr


# ---- Prometheus -----------------------------------------------------------------------------------------


def test_promtool_check_config() -> None:
    binary = _require(tool("promtool"), "promtool")
    result = run([binary, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_promtool_check_rules() -> None:
    binary = _require(tool("promtool"), "promtool")
    files = sorted(str(p) for p in (PROMETHEUS_DIR / "rules").glob("*.yml"))
    result = run([binary, "check", "rules", *files])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests() -> None:
    binary = _require(tool("promtool"), "promtool")
    files = sorted(str(p) for p in (PROMETHEUS_DIR / "tests").glob("*_test.yml"))
    assert files
    result = run([binary, "test", "rules", *files])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_and_annotations() -> None:
    groups = yaml.safe_load((PROMETHEUS_DIR / "rules" / "squid.yml").read_text(encoding="utf-8"))["groups"]
    alerts = {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}
    tested = set()
    for path in (PROMETHEUS_DIR / "tests").glob("*_test.yml"):
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            tested |= {t["alertname"] for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    assert set(alerts) - tested == set(), "alerts without a firing unit test"
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


# ---- Grafana -------------------------------------------------------------------------------------------


def test_grafana_provisioning_matches_the_dashboard_and_compose(compose: dict[str, Any]) -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    datasources = yaml.safe_load(
        (provisioning / "datasources" / "prometheus.yml").read_text(encoding="utf-8")
    )
    source = datasources["datasources"][0]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((provisioning / "dashboards" / "squid.yml").read_text(encoding="utf-8"))
    path = providers["providers"][0]["options"]["path"]
    grafana = compose["services"]["grafana"]
    dashboards = mount(grafana, path)
    assert dashboards["source"] == str(DEPLOY / "grafana" / "dashboards") and dashboards["read_only"]
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == f"{path}/squid.json"
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == source["uid"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == source["uid"], panel["title"]


def test_dashboard_loads_and_lays_out() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] == "squid-cxr" and dashboard["schemaVersion"] >= 36
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids are unique"
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {(pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])}
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
        if panel["type"] != "row":
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
    titles = " | ".join(p["title"].lower() for p in panels)
    for topic in (
        "request rate",
        "latency",
        "inference",
        "batch size",
        "score distribution",
        "flagged",
        "rejections",
        "jobs",
        "throughput",
        "failures",
        "workers",
        "dicom node",
    ):
        assert topic in titles, f"no panel about {topic}"


# ---- settings documentation -----------------------------------------------------------------------------


def test_env_example_documents_every_setting_with_its_default() -> None:
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    lines = text.splitlines()
    active = [line for line in lines if re.match(r"^\s*SQUID_", line)]
    assert not active, f"the example is the default env_file: keep every setting commented: {active}"
    found = {}
    for index, line in enumerate(lines):
        match = re.match(r"^#(SQUID_[A-Z0-9_]+)=(.*)$", line)
        if match:
            found[match.group(1)] = (match.group(2), "\n".join(lines[max(0, index - 3) : index]))
    assert set(found) == {env_name(field) for field in SETTINGS}
    for field in SETTINGS:
        value, comment = found[env_name(field)]
        if SETTINGS[field].default is None:
            assert "unset" in comment, f"{env_name(field)}: say what unset means"
        else:
            assert value == documented_default(field), env_name(field)


def test_docs_table_documents_every_setting_and_compose_variable() -> None:
    text = DOCS.read_text(encoding="utf-8")
    rows = {}
    for line in text.splitlines():
        match = re.match(r"^\|\s*`(SQUID_[A-Z0-9_]+)`\s*\|\s*([^|]*?)\s*\|", line)
        if match:
            rows[match.group(1)] = match.group(2).strip("` ")
    for field in SETTINGS:
        assert env_name(field) in rows, f"docs/deployment.md: no row for {env_name(field)}"
        assert rows[env_name(field)] == documented_default(field), env_name(field)
    variables = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE_FILE.read_text(encoding="utf-8")))
    missing = {v for v in variables if f"`{v}`" not in text}
    assert not missing, f"compose variables not documented: {sorted(missing)}"
    assert (REPO / "docs" / "img" / "dashboard.png").is_file()
    assert "img/dashboard.png" in text
