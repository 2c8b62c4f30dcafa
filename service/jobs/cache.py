"""Scores already computed, so a re-submitted folder resumes instead of rescoring.

Keyed by the SHA-256 of the file's bytes within a namespace of the model (version + weights hash):
the same bytes through the same model always give the same score, whereas a SOP Instance UID can be
re-used for a re-processed image and a path can be re-exported with new content. Only scored files
are cached (the value holds the UIDs and the full-precision score); rejections are cheap to redo and
depend on reader code, not on the model. ``is_anomalous`` is recomputed from the cached score with
the threshold active now.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Protocol

import redis


class ScoreCache(Protocol):
    def get_many(self, keys: list[str]) -> dict[str, dict[str, Any]]: ...

    def put_many(self, items: dict[str, dict[str, Any]]) -> None: ...


class NullCache:
    """No resumption (benchmarks measure scoring, not look-ups)."""

    def get_many(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        return {}

    def put_many(self, items: dict[str, dict[str, Any]]) -> None:
        return None


class RedisScoreCache:
    """One Redis hash per model namespace: field = content hash, value = JSON."""

    def __init__(self, client: redis.Redis, prefix: str, namespace: str) -> None:
        self.client = client
        self.key = f"{prefix}:cache:{namespace}"

    def get_many(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        if not keys:
            return {}
        values = self.client.hmget(self.key, keys)
        return {key: json.loads(value) for key, value in zip(keys, values, strict=True) if value is not None}

    def put_many(self, items: dict[str, dict[str, Any]]) -> None:
        if items:
            self.client.hset(self.key, mapping={key: json.dumps(value) for key, value in items.items()})


class SqliteScoreCache:
    """A local file for the in-process path (``squid batch`` without a broker)."""

    def __init__(self, path: Path, namespace: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.namespace = namespace
        self.db = sqlite3.connect(path)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS scores"
            " (namespace TEXT, key TEXT, value TEXT, PRIMARY KEY (namespace, key))"
        )
        self.db.commit()

    def get_many(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(keys), 500):
            part = keys[start : start + 500]
            marks = ",".join("?" * len(part))
            cursor = self.db.execute(
                f"SELECT key, value FROM scores WHERE namespace = ? AND key IN ({marks})",
                [self.namespace, *part],
            )
            found.update((key, json.loads(value)) for key, value in cursor)
        return found

    def put_many(self, items: dict[str, dict[str, Any]]) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO scores VALUES (?, ?, ?)",
            [(self.namespace, key, json.dumps(value)) for key, value in items.items()],
        )
        self.db.commit()

    def close(self) -> None:
        self.db.close()
