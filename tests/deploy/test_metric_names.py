"""Every metric the dashboard and the alert rules query is one the API, a worker or the DICOM node
really exports.

Checked against the live /metrics of the native compose stack (tests/deploy/conftest.py) after it
scored images, rejected an upload and ran a job; histogram ``_bucket/_sum/_count`` series count as
exported when their family is. Recording-rule names and Prometheus' own ``up`` are the only others.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from deploy_support import DASHBOARD, exported_names, load_script, metric_names, recorded_names, rule_exprs

PROMETHEUS_OWN = {"up"}


def dashboard_exprs() -> list[tuple[str, str]]:
    render = load_script("render_dashboard")
    return list(render.dashboard_exprs(json.loads(DASHBOARD.read_text(encoding="utf-8"))))


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'histogram_quantile(0.95, sum by (le, endpoint) (rate(squid_x_bucket{endpoint!~"/a|/b"}[5m])))',
            {"squid_x_bucket"},
        ),
        (
            "sum(rate(a_total[$__rate_interval])) / on () group_left () b:rec:rate5m > 0.05",
            {"a_total", "b:rec:rate5m"},
        ),
        ('absent(up{job="w"} == 1) or vector(0) and count(count by (v) (i or j)) > 1e3', {"up", "i", "j"}),
    ],
)
def test_metric_names_parser(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


@pytest.mark.slow  # the live native stack
def test_dashboard_and_rules_query_exported_metrics(live_stack: Any) -> None:
    exported = (
        exported_names(live_stack.api_metrics())
        | exported_names(live_stack.worker_metrics())
        | exported_names(live_stack.node_metrics())
    )
    known = exported | recorded_names() | PROMETHEUS_OWN
    queried = dashboard_exprs() + rule_exprs()
    missing = {
        f"{where}: {name}" for where, expr in queried for name in metric_names(expr) if name not in known
    }
    assert not missing, "queried but not exported:\n" + "\n".join(sorted(missing))
    # The check is not vacuous: every process's families are queried.
    queried_names = {name for _, expr in queried for name in metric_names(expr)}
    assert {
        "squid_http_requests_total",
        "squid_anomaly_score_bucket",
        "squid_anomalous_total",
    } <= queried_names
    assert {
        "squid_batch_files_total",
        "squid_batch_queue_messages",
        "squid_batch_worker_info",
    } <= queried_names
    assert {
        "squid_node_instances_total",
        "squid_node_images_scored_total",
        "squid_node_objects_sent_total",
        "squid_node_dead_letters_total",
    } <= queried_names


@pytest.mark.slow  # the live native stack
def test_dashboard_queries_run_on_prometheus(live_stack: Any) -> None:
    """Each expression (variables substituted as Grafana would) is valid PromQL for Prometheus."""
    render = load_script("render_dashboard")
    prometheus = render.Prometheus(live_stack.stack.prometheus_url)
    errors = []
    for title, expr in dashboard_exprs():
        try:
            prometheus.query(render.substitute(expr, "1m"), at=time.time())
        except render.PrometheusError as exc:
            errors.append(f"{title}: {exc}")
    assert not errors, "\n".join(errors)
