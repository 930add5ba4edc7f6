"""Per-(app, mailbox) throttling shared by every worker through Redis.

Graph allows 4 concurrent requests per app and mailbox and answers 429 with a Retry-After; both
are enforced here for the whole fleet. A slot is a member of a sorted set scored by its expiry,
so a worker that dies mid-send frees its slots when the lease runs out. A 429 blocks the mailbox
for everyone until Retry-After has passed. Redis's own clock (TIME) is used so that workers on
machines with skewed clocks agree. A slot is held by a lane that sends several notifications in
turn; before each send, `begin_send` renews the lease and sets the notification's "started" send
mark (`worker.sendmarks`) in the same round trip. Every Redis call goes through
`transport.redis_errors.redis_boundary`: an outage leaves as `RedisUnavailable`.

`begin_send` is not the last word: a request it admitted may wait for a connection, or for a starved
event loop, while a 429 for the mailbox arrives. `send_gate` is checked again once the request's
connection is in hand (`transport.send_gate`): the block this process knows of, and, when the wait
since `begin_send` was longer than `recheck_ms`, the block in Redis (another worker's 429).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

import structlog

from shared.errors import RedisUnavailable
from transport.redis_batch import RedisBatch
from transport.redis_errors import redis_boundary
from transport.send_gate import Gate
from worker.sendmarks import MARK_TTL_S, STARTED_MARK, fence_key, mark_key

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local blocked = tonumber(redis.call('GET', KEYS[2]) or '0')
if blocked > now then return {0, blocked - now, 1} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return {0, 0, 2} end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) + 1000)
return {1, 0, 0}
"""

_MARK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local blocked = tonumber(redis.call('GET', KEYS[2]) or '0')
if blocked > now then return {0, blocked - now, 1} end
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return {0, 0, 2} end
if redis.call('EXISTS', KEYS[5]) == 1 then return {0, 0, 4} end
local pace = tonumber(ARGV[3])
if pace > 0 then
  local nxt = tonumber(redis.call('GET', KEYS[3]) or '0')
  if nxt > now then return {0, nxt - now, 3} end
  redis.call('SET', KEYS[3], now + pace, 'PX', pace + 1000)
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) + 1000)
if ARGV[6] == '1' then redis.call('SET', KEYS[4], ARGV[5], 'EX', tonumber(ARGV[4])) end
return {1, 0, 0}
"""

_BLOCKED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local blocked = tonumber(redis.call('GET', KEYS[1]) or '0')
if blocked > now then return blocked - now end
return 0
"""

_BLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local untilms = now + tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if untilms > cur then redis.call('SET', KEYS[1], untilms, 'PX', tonumber(ARGV[1]) + 1000) end
return math.max(untilms, cur)
"""

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Slot:
    """Outcome of asking for a slot: granted, or why not (`blocked` by a Retry-After) and for how long."""

    granted: bool
    wait_ms: int = 0
    blocked: bool = False
    fenced: bool = False  # the sweeper gave the row back to the queue: this claim must not send it


class MailboxThrottle:
    """Fleet-wide concurrency, pacing and Retry-After blocks per (app, mailbox)."""

    def __init__(self, redis: Any, *, limit: int, lease_ms: int, pacing_ms: int = 0, recheck_ms: int = 20) -> None:
        self._redis = redis
        self._limit = limit
        self._lease_ms = lease_ms
        self._pacing_ms = pacing_ms
        self._recheck_ms = recheck_ms
        self._acquire = redis.register_script(_ACQUIRE)
        self._mark = redis.register_script(_MARK)
        self._blocked = redis.register_script(_BLOCKED)
        self._block = redis.register_script(_BLOCK)
        self._batch = RedisBatch(redis)  # the per-send calls of all lanes leave together (transport.redis_batch)
        self._local: dict[str, asyncio.Semaphore] = {}
        self._blocked_until: dict[str, float] = {}

    def local_gate(self, mailbox_key: str) -> asyncio.Semaphore:
        """In-process gate so one process never asks Redis for more slots than exist."""
        gate = self._local.get(mailbox_key)
        if gate is None:
            gate = self._local[mailbox_key] = asyncio.Semaphore(self._limit)
        return gate

    def block_locally(self, mailbox_key: str, retry_after_ms: int) -> None:
        """Block the mailbox in this process at once, before Redis hears of it.

        Called synchronously when a 429 arrives, so no other coroutine of this process can send to
        the mailbox in the moment it takes to tell Redis.
        """
        until = time.monotonic() + retry_after_ms / 1000
        self._blocked_until[mailbox_key] = max(until, self._blocked_until.get(mailbox_key, 0.0))

    def local_block_ms(self, mailbox_key: str) -> int:
        """How long this process still knows the mailbox to be blocked (0 if not)."""
        remaining = self._blocked_until.get(mailbox_key, 0.0) - time.monotonic()
        return int(remaining * 1000) + 1 if remaining > 0 else 0

    async def try_acquire(self, mailbox_key: str, lease_id: str) -> Slot:
        """One attempt at a slot (held under `lease_id` until released or its lease runs out)."""
        if blocked_ms := self.local_block_ms(mailbox_key):
            return Slot(granted=False, wait_ms=blocked_ms, blocked=True)
        keys = [f"tm:mbx:{mailbox_key}:leases", f"tm:mbx:{mailbox_key}:block"]
        with redis_boundary("mailbox slots"):
            ok, wait_ms, reason = await self._batch.script(self._acquire, keys, [lease_id, self._lease_ms, self._limit])
        return Slot(granted=bool(ok), wait_ms=int(wait_ms), blocked=reason == 1)

    async def begin_send(self, mailbox_key: str, lease_id: str, notification_id: str, *, claim: str = "") -> Slot:
        """Right before a send on a held slot: check the mailbox is not blocked, apply pacing,
        renew the slot's lease and set the notification's send mark, in one round trip.

        Not granted when blocked (`blocked`), when pacing asks to wait (`wait_ms`), when the
        sweeper fenced the row off from this `claim` (`fenced`: the row is no longer this
        worker's to send), or when the slot's lease was lost (then `wait_ms` is 0 and the
        caller must acquire again).
        """
        return await self._check(mailbox_key, lease_id, notification_id, claim=claim, send=True)

    async def renew(self, mailbox_key: str, lease_id: str, notification_id: str, *, claim: str = "") -> Slot:
        """Before each request of a large message's upload (worker.uploads): `begin_send`'s checks and lease
        renewal, without pacing and without the send mark (nothing can be delivered before the draft's send)."""
        return await self._check(mailbox_key, lease_id, notification_id, claim=claim, send=False)

    async def _check(self, mailbox_key: str, lease_id: str, notification_id: str, *, claim: str,
                     send: bool) -> Slot:
        if blocked_ms := self.local_block_ms(mailbox_key):
            return Slot(granted=False, wait_ms=blocked_ms, blocked=True)
        keys = [f"tm:mbx:{mailbox_key}:leases", f"tm:mbx:{mailbox_key}:block",
                f"tm:mbx:{mailbox_key}:pace", mark_key(notification_id), fence_key(notification_id, claim)]
        pacing_ms = self._pacing_ms if send else 0
        with redis_boundary("mailbox slots"):
            ok, wait_ms, reason = await self._batch.script(
                self._mark, keys, [lease_id, self._lease_ms, pacing_ms, MARK_TTL_S, STARTED_MARK, "1" if send else "0"])
        return Slot(granted=bool(ok), wait_ms=int(wait_ms), blocked=reason == 1, fenced=reason == 4)

    def send_gate(self, mailbox_key: str, *, admitted_at: float) -> Gate:
        """The check a request admitted by `begin_send` at `admitted_at` (time.monotonic()) passes once its
        connection is in hand: how long the mailbox is still blocked, 0 to go. Redis is asked again only
        when the request waited longer than `recheck_ms` since then; if Redis cannot answer, the request
        goes (begin_send admitted it, and no other worker could have told Redis either)."""

        async def gate() -> int:
            if blocked_ms := self.local_block_ms(mailbox_key):
                return blocked_ms
            if (time.monotonic() - admitted_at) * 1000 < self._recheck_ms:
                return 0
            try:
                with redis_boundary("mailbox slots"):
                    blocked_ms = int(await self._batch.script(self._blocked, [f"tm:mbx:{mailbox_key}:block"], []))
            except RedisUnavailable:
                log.warning("throttle.recheck_failed", mailbox=mailbox_key)
                return 0
            if blocked_ms:
                self.block_locally(mailbox_key, blocked_ms)
            # a 429 of this process may have come in while Redis answered
            return max(blocked_ms, self.local_block_ms(mailbox_key))

        return gate

    async def acquire(self, mailbox_key: str, lease_id: str, *, max_wait_ms: int) -> Slot:
        """Wait up to max_wait_ms for a slot; a Retry-After block returns at once (never slept out)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait_ms / 1000
        pause_s = 0.02  # another process holds the slots: its sends take tens of ms at least
        while True:
            slot = await self.try_acquire(mailbox_key, lease_id)
            if slot.granted or slot.blocked:
                return slot
            remaining = deadline - loop.time()
            if remaining <= 0:
                return slot
            await asyncio.sleep(min(remaining, max(pause_s, slot.wait_ms / 1000)) * random.uniform(0.8, 1.2))
            pause_s = min(pause_s * 2, 0.1)

    async def release(self, mailbox_key: str, lease_id: str) -> None:
        """Give the slot back."""
        with redis_boundary("mailbox slots"):
            await self._batch.command("ZREM", f"tm:mbx:{mailbox_key}:leases", lease_id)

    async def block(self, mailbox_key: str, retry_after_ms: int) -> int:
        """Block the mailbox for every worker; returns the block's end (Redis clock, ms)."""
        with redis_boundary("mailbox slots"):
            return int(await self._block(keys=[f"tm:mbx:{mailbox_key}:block"], args=[max(1, retry_after_ms)]))
