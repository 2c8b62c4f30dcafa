"""Prometheus metrics of the DICOM node (``squid listen``), served on ``SQUID_DICOM_METRICS_PORT``.

Metric                                  type     labels
squid_node_instances_total              counter  outcome (stored|skipped|rejected), reason
squid_node_associations_total           counter  outcome (accepted|rejected)
squid_node_images_scored_total          counter  outcome (scored|skipped|out_of_domain|failed)
squid_node_studies_total                counter  outcome (scored|failed)
squid_node_objects_sent_total           counter  destination
squid_node_send_failures_total          counter  destination
squid_node_dead_letters_total           counter  destination
squid_node_queue_depth                  gauge    stage (incoming|scoring|outbox|dead), files now
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

STAGES = ("incoming", "scoring", "outbox", "dead")


class NodeMetrics:
    """One registry per node, so tests can run several nodes in one process."""

    def __init__(self, depth: Callable[[str], int] | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "squid_node_instances_total", "C-STORE instances by outcome", ["outcome", "reason"], registry=r
        )
        self.associations = Counter(
            "squid_node_associations_total", "Associations by outcome", ["outcome"], registry=r
        )
        self.images = Counter("squid_node_images_scored_total", "Images by outcome", ["outcome"], registry=r)
        self.studies = Counter(
            "squid_node_studies_total", "Closed studies by outcome", ["outcome"], registry=r
        )
        self.sent = Counter(
            "squid_node_objects_sent_total", "Results acknowledged", ["destination"], registry=r
        )
        self.send_failures = Counter(
            "squid_node_send_failures_total", "Failed send attempts", ["destination"], registry=r
        )
        self.dead = Counter(
            "squid_node_dead_letters_total", "Results given up on", ["destination"], registry=r
        )
        depth_gauge = Gauge("squid_node_queue_depth", "Files waiting per stage", ["stage"], registry=r)
        if depth is not None:
            for stage in STAGES:
                depth_gauge.labels(stage).set_function(partial(depth, stage))

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        start_http_server(port, addr=host, registry=self.registry)
