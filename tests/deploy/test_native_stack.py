"""The compose stack's processes, started natively with the compose file's commands and environment
(redis, api, worker, the DICOM node, and a real Prometheus with the project's config pointed at
them): a score, a job and a C-STORE go through, and Prometheus reports every target up and the
metrics non-zero.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from deploy_support import load_script, poll

pytestmark = pytest.mark.slow  # the compose stack run natively, then waits for scrapes

SCRAPE_WAIT_S = 90.0  # 15 s scrape interval: a few scrapes, generously bounded on a busy machine
EXPECTED_JOBS = {"squid-api", "squid-worker", "squid-node", "prometheus"}


def instant(live_stack: Any, expr: str) -> float | None:
    from urllib.parse import quote

    data = live_stack.prometheus(f"/api/v1/query?query={quote(expr)}")["data"]["result"]
    return float(data[0]["value"][1]) if data else None


def test_processes_get_the_compose_commands_and_settings(live_stack: Any) -> None:
    processes = live_stack.stack.processes
    assert processes["api"].argv[-1] == "serve"
    assert processes["worker"].argv[-3:] == ["worker", "--concurrency", "1"]
    api_env, worker_env = processes["api"].env, processes["worker"].env
    assert api_env["SQUID_WORKERS"] == "2", "compose's default of two uvicorn workers"
    assert api_env["SQUID_THRESHOLD"] == worker_env["SQUID_THRESHOLD"] == str(live_stack.threshold)
    assert api_env["SQUID_IMPORT_ROOT"] == worker_env["SQUID_IMPORT_ROOT"]
    assert Path(api_env["SQUID_IMPORT_ROOT"]).name == "pacs-export"
    assert api_env["SQUID_BROKER_URL"] == worker_env["SQUID_BROKER_URL"]
    assert api_env["SQUID_BROKER_URL"].startswith("redis://127.0.0.1:")
    listener = processes["listener"]
    assert listener.argv[-1] == "listen"
    assert listener.env["SQUID_BROKER_URL"] == api_env["SQUID_BROKER_URL"], "scores on the same workers"
    assert listener.env["SQUID_DICOM_PORT"] == str(live_stack.stack.dicom_port)
    assert listener.env["SQUID_DICOM_SPOOL_DIR"] == str(live_stack.workdir / "volumes" / "spool")
    # The page reads the node's health, worklist records and dead letters from the same spool.
    assert api_env["SQUID_DICOM_SPOOL_DIR"] == listener.env["SQUID_DICOM_SPOOL_DIR"]


def test_score_and_job_went_through(live_stack: Any) -> None:
    assert live_stack.rejected_status == 415
    assert live_stack.stored_status == 0, "the DICOM node stored the instance"
    job = live_stack.job
    assert job["state"] == "succeeded", job
    assert job["scored"] == 5 and job["skipped"] == 1, job
    assert job["threshold"] == pytest.approx(live_stack.threshold)


def test_prometheus_sees_every_target_up_and_the_score_metrics(live_stack: Any) -> None:
    def targets_up() -> dict[str, str] | None:
        active = live_stack.prometheus("/api/v1/targets")["data"]["activeTargets"]
        health = {target["labels"]["job"]: target["health"] for target in active}
        return health if set(health) == EXPECTED_JOBS and set(health.values()) == {"up"} else None

    assert poll(targets_up, SCRAPE_WAIT_S), live_stack.prometheus("/api/v1/targets")["data"]["activeTargets"]

    checks = {
        # what the API scored: 6 images, half of them at or above the threshold, one rejection
        'sum(squid_anomaly_score_count{job="squid-api"})': 6,
        'sum(squid_anomalous_total{job="squid-api"})': 3,
        'sum(squid_http_requests_total{job="squid-api", endpoint="/score", status="200"})': 6,
        'sum(squid_rejections_total{job="squid-api", reason="unsupported_format"})': 1,
        'sum(squid_inference_duration_seconds_count{job="squid-api"})': None,  # > 0
        'max(squid_model_threshold{job="squid-api"})': live_stack.threshold,
        # what the worker did: the API's job (five files scored, one skipped) and the DICOM node's study
        # (one instance, scored on the same workers once the node's 10 s quiet time has passed)
        'sum(squid_batch_files_total{job="squid-worker", outcome="scored"})': 5 + 1,
        'sum(squid_batch_jobs_finished_total{job="squid-worker", state="succeeded"})': 1 + 1,
        'sum(squid_batch_worker_info{job="squid-worker"})': 1,
        'max(squid_batch_redis_up{job="squid-worker"})': 1,
        # what the DICOM node received: one instance by C-STORE
        'sum(squid_node_instances_total{job="squid-node", outcome="stored"})': 1,
    }

    def all_reported() -> dict[str, float | None] | None:
        values = {expr: instant(live_stack, expr) for expr in checks}
        ok = all(
            values[expr] is not None
            and (values[expr] == pytest.approx(want) if want is not None else values[expr])
            for expr, want in checks.items()
        )
        return values if ok else None

    values = poll(all_reported, SCRAPE_WAIT_S)
    report = (f"{expr} = {instant(live_stack, expr)} (want {want})" for expr, want in checks.items())
    assert values, "\n".join(report)


def test_rules_load_and_alerting_is_quiet(live_stack: Any) -> None:
    groups = live_stack.prometheus("/api/v1/rules")["data"]["groups"]
    assert {g["name"] for g in groups} >= {"squid-recording", "squid-api", "squid-model", "squid-jobs"}
    unhealthy = [r["name"] for g in groups for r in g["rules"] if r.get("health") not in ("ok", "unknown")]
    assert not unhealthy
    firing = [
        a["labels"]["alertname"]
        for a in live_stack.prometheus("/api/v1/alerts")["data"]["alerts"]
        if a["state"] == "firing"
    ]
    assert not firing, firing


def test_dashboard_renders_from_the_live_prometheus(live_stack: Any, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    render = load_script("render_dashboard")
    out = tmp_path / "dashboard.png"
    results = render.render(render.Prometheus(live_stack.stack.prometheus_url), out, minutes=5, step=5)
    assert out.stat().st_size > 50_000
    assert not [r for r in results if r.errors]
    with_data = {r.title for r in results if r.series}
    for title in ("Model", "API up", "Workers up", "Jobs and queue", "Workers"):  # gauges: data at once
        assert title in with_data, f"{title} has no data"
