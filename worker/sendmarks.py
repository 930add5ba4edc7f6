"""Send marks: the evidence, kept in Redis, of how far a send got, read when its worker died.

Claims, leases and outcomes live in the database; whether a request may have left does not, until
the outcome is written. So a row gets a per-notification mark in Redis:

    (no mark)    the send never started: the sweeper puts the row back in the queue
    "1"          started: set right before the request leaves (for Graph inside the throttle's
                 `begin_send`, one Lua call with the slot check; for the SMTP relay by `mark_started`)
    "sent"       accepted: Graph or the relay said yes (`mark_accepted`); the sweeper records it sent

and, apart from the mark, a fence per (notification, claim), `fence_key`: set by the sweeper when it
finds no mark on a row claimed as C whose lease ran out and puts the row back in the queue. Claim C can
never start that row afterwards, whatever the next claim does to the mark (a worker that was only slow,
not dead, would otherwise send it beside the next claim).

A mark is trusted only within one Redis epoch (`EPOCH_KEY`, a random id set once): a worker claims
under the epoch it reads, and if Redis lost its data since (the epoch changed or is gone), a mark's
absence proves nothing, so the row counts as possibly sent. Marks are cleared once the outcome is
in the database (`clear`) and expire after `MARK_TTL_S` in any case.

Every call goes through `transport.redis_errors.redis_boundary`: Redis errors leave as `RedisUnavailable`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

import structlog

from transport.redis_errors import redis_boundary

log = structlog.get_logger(__name__)
EPOCH_KEY = "tm:epoch"
MARK_TTL_S = 7 * 24 * 3600
STARTED_MARK = "1"
ACCEPTED_MARK = "sent"
FENCE_TTL_S = 24 * 3600  # longer than any batch lives: its claim can no longer start a send after that
ACCEPTED_FLUSH_S = 0.02  # how long "accepted" marks are gathered before one pipelined write


class Evidence(StrEnum):
    """What the marks say about a row whose worker died."""

    NEVER_STARTED = "never_started"
    MAYBE_SENT = "maybe_sent"
    ACCEPTED = "accepted"


def mark_key(notification_id: str) -> str:
    """Redis key of the notification's send mark."""
    return f"tm:sendmark:{notification_id}"


def current_epoch(redis_sync: Any) -> str:
    """The id of Redis's current data set (set on first use); it changes when Redis loses its data."""
    with redis_boundary("send marks epoch"):
        redis_sync.set(EPOCH_KEY, uuid.uuid4().hex[:12], nx=True)
        value = redis_sync.get(EPOCH_KEY)
    return value.decode() if isinstance(value, bytes) else str(value)


# Reads each row's mark and, where there is none, fences the row off from its claim, atomically: either
# the worker's `begin_send` / `mark_started` ran first (then its mark is read here) or this did (then
# they refuse to start). KEYS: the n marks, then the n fence keys; ARGV: the fence's ttl.
_CLASSIFY_AND_FENCE = """
local n = #KEYS / 2
local out = {}
for i = 1, n do
  local v = redis.call('GET', KEYS[i])
  if not v then
    redis.call('SET', KEYS[n + i], '1', 'EX', tonumber(ARGV[1]))
    out[i] = ''
  else
    out[i] = v
  end
end
return out
"""
# Sets the "started" mark unless the sweeper fenced this claim off (then 0): the SMTP relay's `begin_send`.
_START = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
return 1
"""


def fence_key(notification_id: str, claim: str) -> str:
    """Redis key that, once set, stops `claim` (a batch's claimed_by) from starting the notification's send."""
    return f"tm:fence:{notification_id}:{claim}"


def classify(redis_sync: Any, rows: Sequence[tuple[str, str | None]]) -> list[Evidence]:
    """What the marks say of each (notification id, claimed_by) whose lease ran out, in order. Rows
    with no mark are fenced off from their claim in the same step, so `NEVER_STARTED` stays true
    even if the worker was only slow and still holds them."""
    if not rows:
        return []
    with redis_boundary("send marks"):
        epoch = redis_sync.get(EPOCH_KEY)
        marks = redis_sync.eval(_CLASSIFY_AND_FENCE, 2 * len(rows), *(mark_key(nid) for nid, _ in rows),
                                *(fence_key(nid, claimed_by or "") for nid, claimed_by in rows), FENCE_TTL_S)
    epoch = epoch.decode() if isinstance(epoch, bytes) else epoch
    return [_evidence(mark or None, (claimed_by or "").rpartition("/")[2] == epoch)
            for (_, claimed_by), mark in zip(rows, marks, strict=True)]


def _evidence(mark: bytes | None, same_epoch: bool) -> Evidence:
    if mark == ACCEPTED_MARK.encode():
        return Evidence.ACCEPTED  # Graph answered 202 before the worker died
    if mark is not None or not same_epoch:
        return Evidence.MAYBE_SENT  # the send started, or Redis lost its data since the claim: cannot know
    return Evidence.NEVER_STARTED


class SendMarks:
    """The asynchronous side, used by the sender on the process event loop."""

    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self._start = redis.register_script(_START)
        self._accepted_pending: list[str] = []
        self._tasks: set[asyncio.Future[None]] = set()  # flushes in progress (the loop keeps weak refs only)

    async def mark_started(self, notification_id: str, *, claim: str = "") -> bool:
        """The request is about to leave (SMTP relay sends, which take no Graph mailbox slot); False
        (and no mark) when the sweeper fenced the row off from `claim`: it must not be sent."""
        with redis_boundary("send marks"):
            started = await self._start(keys=[mark_key(notification_id), fence_key(notification_id, claim)],
                                        args=[STARTED_MARK, MARK_TTL_S])
        return bool(started)

    async def mark_accepted_now(self, notification_id: str) -> None:
        """The message was accepted: should this process die before its outcome is written, the
        sweeper records it sent instead of sending it again. Only an existing mark is changed
        (none after a FLUSHALL: then the row is treated as possibly sent)."""
        with redis_boundary("send marks"):
            await self._redis.set(mark_key(notification_id), ACCEPTED_MARK, ex=MARK_TTL_S, xx=True)

    def mark_accepted(self, notification_id: str) -> None:
        """`mark_accepted_now` without a round trip per send: gathered and written together a few
        milliseconds later. A process that dies inside that moment leaves the row "possibly sent",
        which is what it would be without the mark: never wrong, only less precise."""
        self._accepted_pending.append(notification_id)
        if len(self._accepted_pending) == 1:
            asyncio.get_running_loop().call_later(
                ACCEPTED_FLUSH_S, lambda: self._tasks.add(asyncio.ensure_future(self._flush_accepted())))

    async def _flush_accepted(self) -> None:
        ids, self._accepted_pending = self._accepted_pending, []
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for nid in ids:
                    pipe.set(mark_key(nid), ACCEPTED_MARK, ex=MARK_TTL_S, xx=True)
                await pipe.execute()
        except Exception:  # best effort: without the mark the row stays "possibly sent"
            log.warning("sendmarks.mark_accepted_failed", marks=len(ids), exc_info=True)
        finally:
            self._tasks.discard(asyncio.current_task())

    async def clear(self, notification_ids: Sequence[str]) -> None:
        """Drop the marks of rows whose outcome is in the database; best effort (marks expire)."""
        if not notification_ids:
            return
        try:
            await self._redis.delete(*(mark_key(nid) for nid in notification_ids))
        except Exception:
            log.debug("sendmarks.clear_failed", exc_info=True)
