"""Prometheus metrics of the DICOM node (``squid listen``), served on ``SQUID_DICOM_METRICS_PORT``.

Metric                                  type     labels
squid_node_instances_total              counter  outcome (stored|skipped|rejected), reason
squid_node_associations_total           counter  outcome (accepted|rejected), reason
squid_node_connections_total            counter  outcome (accepted|refused|evicted), reason
squid_node_open_connections             gauge    state (pending|associated)
squid_node_connection_limit             gauge    kind (connections|associations|per_peer)
squid_node_images_scored_total          counter  outcome (scored|skipped|out_of_domain|failed)
squid_node_studies_total                counter  outcome (scored|failed)
squid_node_objects_sent_total           counter  destination
squid_node_send_failures_total          counter  destination
squid_node_dead_letters_total           counter  destination
squid_node_results_not_built_total      counter  reason (a scored image that got no SR/SC)
squid_node_queue_depth                  gauge    stage (incoming|scoring|outbox|dead), files now
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

STAGES = ("incoming", "scoring", "outbox", "dead")
CONNECTION_STATES = ("pending", "associated")


class NodeMetrics:
    """One registry per node, so tests can run several nodes in one process."""

    def __init__(self, depth: Callable[[str], int] | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "squid_node_instances_total", "C-STORE instances by outcome", ["outcome", "reason"], registry=r
        )
        self.associations = Counter(
            "squid_node_associations_total", "Associations by outcome", ["outcome", "reason"], registry=r
        )
        self.connections = Counter(
            "squid_node_connections_total", "TCP connections by outcome", ["outcome", "reason"], registry=r
        )
        self.open_connections = Gauge(
            "squid_node_open_connections", "Open connections by state", ["state"], registry=r
        )
        self.connection_limit = Gauge(
            "squid_node_connection_limit", "Configured connection caps", ["kind"], registry=r
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
        self.not_built = Counter(
            "squid_node_results_not_built_total", "Scored images without SR/SC", ["reason"], registry=r
        )
        depth_gauge = Gauge("squid_node_queue_depth", "Files waiting per stage", ["stage"], registry=r)
        if depth is not None:
            for stage in STAGES:
                depth_gauge.labels(stage).set_function(partial(depth, stage))

    def watch_connections(self, count: Callable[[str], int], limits: dict[str, int]) -> None:
        """Export the open connections per state (``count(state)``) and the caps they run into."""
        for state in CONNECTION_STATES:
            self.open_connections.labels(state).set_function(partial(count, state))
        for kind, value in limits.items():
            self.connection_limit.labels(kind).set(value)

    def serve(self, port: int, host: str) -> None:
        start_http_server(port, addr=host, registry=self.registry)
