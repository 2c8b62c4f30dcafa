"""The DICOM node's health and dead letters on the web page: ``GET /node/health``,
``GET /node/dead-letters`` and ``POST /node/dead-letters/retry``.

The node (``squid listen``) is another process; it writes its health under the node state folder
(:mod:`service.node.health`) and its dead letters lie in its spool, which this API mounts too.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from service.deps import StateDep
from service.errors import ApiError, documented_errors
from service.node.dead_letters import list_dead_letters, retry
from service.node.health import STALE_S, read_health

router = APIRouter(tags=["node"])


class Associations(BaseModel):
    accepted: int
    rejected: int


class NodeStudies(BaseModel):
    waiting: int = Field(description="Studies receiving, or waiting for their quiet time.")
    scoring: int = Field(description="Studies closed and being scored.")
    scored: int = Field(description="Studies scored since the node started.")
    failed: int = Field(description="Scoring attempts that failed (retried) since it started.")


class NodeHealth(BaseModel):
    """What the Grafana row "DICOM node" shows; counts are since the node started."""

    running: bool = Field(description=f"The node wrote its health in the last {STALE_S:.0f} s.")
    updated_at: str
    age_s: float
    ae_title: str
    port: int
    associations: Associations
    instances_stored: int
    studies: NodeStudies
    images: dict[str, int] = Field(description="Images by outcome: scored, skipped, failed.")
    objects_sent: int = Field(description="SR and SC objects the destinations acknowledged.")
    send_failures: int
    outbox: int = Field(description="Results waiting to be sent.")
    dead_letters: int = Field(description="Results given up on (see /node/dead-letters).")


class DeadLetterOut(BaseModel):
    destination: str
    name: str
    size: int
    dead_since: str = Field(description="When it was given up on (after SQUID_DICOM_SEND_ATTEMPTS sends).")


class DeadLetters(BaseModel):
    dead_letters: list[DeadLetterOut]


class RetryRequest(BaseModel):
    """Which dead letters to send again: one (destination and name), a destination's, or all."""

    destination: str | None = None
    name: str | None = None


class RetryResult(BaseModel):
    retried: list[DeadLetterOut]


_ERRORS = documented_errors((404, "the node has not run here (no health written), or no such dead letter"))


@router.get("/node/health", response_model=NodeHealth, responses=_ERRORS)
def node_health(state: StateDep) -> NodeHealth:
    """The node's associations, studies waiting, scored, sent and dead letters (its last snapshot)."""
    health = read_health(state.settings.node_state)
    if health is None:
        raise ApiError(404, "node_not_seen", "no DICOM node has written its health to SQUID_NODE_STATE_DIR")
    return NodeHealth.model_validate(health)


@router.get("/node/dead-letters", response_model=DeadLetters)
def dead_letters(state: StateDep) -> DeadLetters:
    """Results the node gave up sending, by destination."""
    letters = list_dead_letters(state.settings.dicom_spool_dir.resolve())
    return DeadLetters(dead_letters=[DeadLetterOut(**vars(letter)) for letter in letters])


@router.post("/node/dead-letters/retry", response_model=RetryResult, responses=_ERRORS)
def retry_dead_letters(body: RetryRequest, state: StateDep) -> RetryResult:
    """Put dead letters back in their outbox with a fresh attempt count: the node sends them again."""
    moved = retry(state.settings.dicom_spool_dir.resolve(), body.destination, body.name)
    if not moved and (body.destination or body.name):
        raise ApiError(404, "dead_letter_not_found", "no dead letter matches")
    return RetryResult(retried=[DeadLetterOut(**vars(letter)) for letter in moved])
