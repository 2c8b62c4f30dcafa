"""The node's health for the web page: what the Grafana row shows, as a small JSON file the node
rewrites every few seconds (``<state dir>/health.json``) and the API reads.

Counts are since the node started (its Prometheus counters); queue depths are counted on the spool.
A snapshot older than :data:`STALE_S` means the node is not running.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from model.atomic import atomic_write_bytes
from service.jobs.state import now_iso

HEALTH_NAME = "health.json"
INTERVAL_S = 2.0
STALE_S = 15.0


def snapshot(registry: CollectorRegistry, spool_root: Path, ae_title: str, port: int) -> dict[str, Any]:
    """Counters of ``registry`` (a :class:`service.node.metrics.NodeMetrics`) and the spool's queues."""

    def total(name: str, **labels: str) -> int:
        value = 0.0
        for family in registry.collect():
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    value += sample.value
        return int(value)

    return {
        "updated_at": now_iso(),
        "ae_title": ae_title,
        "port": port,
        "associations": {
            "accepted": total("squid_node_associations_total", outcome="accepted"),
            "rejected": total("squid_node_associations_total", outcome="rejected"),
        },
        "instances_stored": total("squid_node_instances_total", outcome="stored"),
        "studies": {
            "waiting": _folders(spool_root / "incoming"),
            "scoring": _folders(spool_root / "scoring"),
            "scored": total("squid_node_studies_total", outcome="scored"),
            "failed": total("squid_node_studies_total", outcome="failed"),
        },
        "images": {
            outcome: total("squid_node_images_scored_total", outcome=outcome)
            for outcome in ("scored", "skipped", "out_of_domain", "failed")
        },
        "objects_sent": total("squid_node_objects_sent_total"),
        "send_failures": total("squid_node_send_failures_total"),
        "outbox": _files(spool_root / "outbox"),
        "dead_letters": _files(spool_root / "dead"),
    }


def write_health(state_dir: Path, health: dict[str, Any]) -> None:
    atomic_write_bytes(state_dir / HEALTH_NAME, json.dumps(health).encode())


def read_health(state_dir: Path) -> dict[str, Any] | None:
    """The last snapshot with ``running`` (fresh enough) and its age; None when the node never wrote one."""
    try:
        health: dict[str, Any] = json.loads((state_dir / HEALTH_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    age = (datetime.now(UTC) - datetime.fromisoformat(health["updated_at"])).total_seconds()
    return {**health, "age_s": round(age, 1), "running": age <= STALE_S}


def _folders(folder: Path) -> int:
    try:
        return sum(1 for path in folder.iterdir() if path.is_dir())
    except OSError:
        return 0


def _files(folder: Path) -> int:
    try:
        return sum(1 for _ in folder.rglob("*.dcm"))
    except OSError:
        return 0
