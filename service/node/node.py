"""The running node: the Storage SCP, a study loop (close quiet studies, score them) and a send loop.

Each loop runs in its own thread, so a slow destination never delays scoring and a long study never
delays sending. At start the spool is recovered first: batches a crash left in ``scoring/`` are
scored again and everything in the outbox is sent again.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from model.runtime import SquidRuntime
from service.node.guard import GuardedServer
from service.node.health import INTERVAL_S as HEALTH_INTERVAL_S
from service.node.health import snapshot, write_health
from service.node.kept import KeptResults
from service.node.metrics import NodeMetrics
from service.node.scp import start_scp
from service.node.send import Dispatcher, senders_for
from service.node.spool import Spool
from service.node.studies import StudyScorer, process_batch
from service.settings import Settings

log = logging.getLogger(__name__)

TICK_S = 0.25


@dataclass
class Node:
    """``squid listen``: build with the settings, ``start()``, then ``stop()`` (or ``wait()``)."""

    settings: Settings
    ae_title: str
    port: int
    stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.spool = Spool(self.settings.dicom_spool_dir)
        self.metrics = NodeMetrics(self._depth)
        self.senders = senders_for(self.settings, self.ae_title)
        self.dispatcher = Dispatcher(
            self.spool,
            self.senders,
            self.metrics,
            self.settings.dicom_send_attempts,
            self.settings.dicom_retry_seconds,
        )
        self.kept = KeptResults(
            self.settings.results_dir.resolve() / "node", self.settings.dicom_keep_results_days
        )
        self.server: GuardedServer | None = None
        self.threads: list[threading.Thread] = []

    def _depth(self, stage: str) -> int:
        return self.spool.count(stage)

    def start(self) -> None:
        leftover = self.spool.recover()
        if leftover:
            log.warning("%d studies interrupted by a stop are scored again", leftover)
        runtime = None
        if not self.settings.broker_url:
            s = self.settings
            runtime = SquidRuntime(
                s.model_path,
                providers=s.providers,
                intra_op_threads=s.intra_op_threads,
                threshold=s.threshold,
            )
        scorer = StudyScorer(self.settings, runtime)
        metrics_port = self.settings.dicom_metrics_port
        if metrics_port:
            self.metrics.serve(metrics_port, self.settings.dicom_metrics_host or self.settings.dicom_host)
        self.threads = [
            threading.Thread(target=self._study_loop, args=(scorer,), name="studies", daemon=True),
            threading.Thread(target=self._send_loop, name="send", daemon=True),
            threading.Thread(target=self._health_loop, name="health", daemon=True),
        ]
        for thread in self.threads:
            thread.start()
        self.server = start_scp(self.settings, self.ae_title, self.port, self.spool, self.metrics)

    def _study_loop(self, scorer: StudyScorer) -> None:
        destinations = sorted(self.senders)
        while not self.stopping.is_set():
            self.kept.sweep_when_due()
            for study in self.spool.quiet_studies(self.settings.dicom_quiet_seconds):
                self.spool.close_study(study)
            for batch in self.spool.batches():
                if self.stopping.is_set():
                    return
                try:
                    process_batch(self.spool, scorer, destinations, batch, self.metrics, self.kept)
                except Exception as exc:  # the batch stays in scoring/ and is tried again
                    self.metrics.studies.labels("failed").inc()
                    log.error("scoring a study failed, retrying: %s", type(exc).__name__)
                    self.stopping.wait(self.settings.dicom_retry_seconds or TICK_S)
            self.stopping.wait(TICK_S)

    def _send_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.dispatcher.round()
            except Exception as exc:  # a full disk or a vanished folder: log, keep the loop alive
                log.error("send round failed: %s", type(exc).__name__)
            self.stopping.wait(TICK_S)

    def _health_loop(self) -> None:
        """What the web page shows of the node (:mod:`service.node.health`), every few seconds."""
        while not self.stopping.is_set():
            try:
                health = snapshot(self.metrics.registry, self.spool.root, self.ae_title, self.port)
                write_health(self.settings.node_state, health)
            except Exception as exc:  # the page goes stale; scoring and sending go on
                log.error("health snapshot failed: %s", type(exc).__name__)
            self.stopping.wait(HEALTH_INTERVAL_S)

    def stop(self) -> None:
        self.stopping.set()
        if self.server is not None:
            self.server.shutdown()
        for thread in self.threads:
            thread.join(timeout=30)

    def wait(self) -> None:
        """Block until SIGINT/SIGTERM (the CLI installs handlers that set ``stopping``)."""
        while not self.stopping.wait(1.0):
            pass
