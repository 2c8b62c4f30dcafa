"""Deterministic UIDs for result objects, so scoring the same image again replaces instead of duplicating.

A PACS keys everything on UIDs: a re-run that minted fresh UIDs would file a second SR and a second
capture next to the first. Deriving them from (source SOP Instance UID, model version, object kind)
makes a re-run with the same model send the same instances (the archive replaces them), while a new
model version gets its own series beside the old results.

UIDs are ``2.25.<integer>`` (PS3.5 B.2): the integer is a name-based UUID (RFC 4122 version 5) in a
namespace that belongs to this software, so no registered root is needed and no collision with
other systems' UIDs is possible in practice.
"""

from __future__ import annotations

import uuid

# Fixed forever: changing it would re-key every result this software has ever written.
NAMESPACE = uuid.UUID("5f2d0c8e-3b7a-5c41-9a0e-7d1f6c2b9e34")
_SEPARATOR = "\x1f"  # cannot occur in a UID, a version string we write, or a kind


def derived_uid(*parts: str) -> str:
    """``2.25.<uuid5(NAMESPACE, parts)>``: the same parts always give the same UID."""
    if not parts or any(not part for part in parts):
        raise ValueError("every part of a derived UID must be a non-empty string")
    return f"2.25.{uuid.uuid5(NAMESPACE, _SEPARATOR.join(parts)).int}"


def instance_uid(source_sop_instance_uid: str, model_version: str, kind: str) -> str:
    """SOP Instance UID of the ``kind`` object (``sr``, ``sc``) made from one source image."""
    return derived_uid("instance", source_sop_instance_uid, model_version, kind)


def series_uid(source_sop_instance_uid: str, model_version: str, kind: str) -> str:
    """Series Instance UID of that object: one result series per source image, model and kind."""
    return derived_uid("series", source_sop_instance_uid, model_version, kind)


def tracking_uid(source_sop_instance_uid: str, model_version: str) -> str:
    """Tracking Unique Identifier of the SR's measurement group (TID 4108)."""
    return derived_uid("tracking", source_sop_instance_uid, model_version)


def device_uid(model_name: str, model_version: str, weights_sha256: str) -> str:
    """Device Observer UID (TID 1004): the algorithm, identified by its weights, is the observer."""
    return derived_uid("device", model_name, model_version, weights_sha256)
