"""What the node keeps of the SR and SC it delivers: nothing by default, or N days of them.

Every result object carries the patient's name and identifiers, so a copy kept forever is both a
privacy liability and a disk that fills up. Once a batch's objects are in every destination's outbox
(the outbox copy goes when the destination acknowledges it, a dead letter stays in ``dead/``), the
scorer's copy is deleted, unless ``SQUID_DICOM_KEEP_RESULTS_DAYS`` is set: then the objects are kept
under ``SQUID_RESULTS_DIR/node/<batch>/dicom/`` and swept once older than that. With no destination
nothing is delivered, so nothing is deleted at hand-over (the sweep still applies when set). The
per-image rows (``instances.csv``, ``dicom_outputs.csv``) are small, hold no names, and stay.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 600.0
DAY_S = 86400.0


@dataclass
class KeptResults:
    root: Path  # SQUID_RESULTS_DIR/node
    days: float
    last_sweep: float = float("-inf")

    def hand_over(self, batch: str, files: list[Path], delivered: bool) -> None:
        """The batch's ``files`` are queued for every destination (``delivered``: there is one)."""
        if self.days <= 0:
            if delivered:
                for path in files:
                    path.unlink(missing_ok=True)
            return
        kept = self.root / batch / "dicom"
        for path in files:
            if path.parent != kept:  # scored on the workers: out of the job's folder, into the node's
                kept.mkdir(parents=True, exist_ok=True)
                os.replace(path, kept / path.name)

    def sweep(self, now: float | None = None) -> int:
        """Delete kept objects older than ``days``; returns how many."""
        if self.days <= 0:
            return 0
        cutoff = (time.time() if now is None else now) - self.days * DAY_S
        removed = 0
        for path in self.root.glob("*/dicom/*.dcm"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        if removed:
            log.info("%d kept result objects swept", removed)
        return removed

    def sweep_when_due(self) -> None:
        now = time.monotonic()
        if now - self.last_sweep >= SWEEP_INTERVAL_S:
            self.last_sweep = now
            self.sweep()
