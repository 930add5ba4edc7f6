"""Small JSON values every API process shares through Redis, each with a TTL; failing open.

What one process learned slowly (a sender domain's DNS report, an app's enterprise application id read
from Graph) is then known to the others. Redis not answering is never an error here: a read is a miss
and a write is skipped (both logged), so the caller looks the value up again or shows it as unknown.
"""

from __future__ import annotations

import json
from typing import Any

import structlog

from shared.redis_client import UNAVAILABLE

_log = structlog.get_logger("tenantmail.api")


async def read_json(redis: Any, key: str) -> Any | None:
    """The value kept at `key`, or None (absent, expired, unreadable, or Redis not answering)."""
    try:
        raw = await redis.get(key)
    except UNAVAILABLE as exc:
        _log.warning("cache.read_skipped", key=key.split(":", 2)[1], error=type(exc).__name__)
        return None
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


async def keep_json(redis: Any, key: str, value: Any, *, ttl_s: float) -> None:
    """Keep `value` at `key` for `ttl_s` seconds; skipped when Redis does not answer."""
    try:
        await redis.set(key, json.dumps(value, separators=(",", ":")), px=max(1, int(ttl_s * 1000)))
    except UNAVAILABLE as exc:
        _log.warning("cache.write_skipped", key=key.split(":", 2)[1], error=type(exc).__name__)
