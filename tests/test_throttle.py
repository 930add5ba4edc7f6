"""worker.throttle.MailboxThrottle against a real Redis; two instances stand for two worker processes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as redis_async

from worker.sendmarks import ACCEPTED_MARK, MARK_TTL_S, SendMarks, mark_key
from worker.throttle import MailboxThrottle, Slot

MAILBOX = "app-1:governance@contoso.example"
OTHER_MAILBOX = "app-1:ceo@contoso.example"


def _lease() -> str:
    return uuid.uuid4().hex


def _run(redis_url: str, scenario: Callable[..., Awaitable[Any]], **throttle_kw: Any) -> Any:
    """Run `scenario(r, t1, t2)` on a fresh loop with two throttles sharing one Redis."""
    async def main() -> Any:
        r = redis_async.Redis.from_url(redis_url)
        try:
            kw = {"limit": 4, "lease_ms": 10_000, **throttle_kw}
            return await scenario(r, MailboxThrottle(r, **kw), MailboxThrottle(r, **kw))
        finally:
            await r.aclose()
    return asyncio.run(main())


async def _poll(predicate: Callable[[], Awaitable[Any]], timeout_s: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        if value := await predicate():
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_throttle_limit_is_shared_across_instances(redis_url: str) -> None:
    async def scenario(r: Any, t1: MailboxThrottle, t2: MailboxThrottle) -> None:
        # given three slots held by one process and one by the other
        first = [await t1.try_acquire(MAILBOX, _lease()) for _ in range(3)]
        held_by_t2 = _lease()
        second = await t2.try_acquire(MAILBOX, held_by_t2)
        # when either asks for a fifth
        over_1 = await t1.try_acquire(MAILBOX, _lease())
        over_2 = await t2.try_acquire(MAILBOX, _lease())
        other_mailbox = await t2.try_acquire(OTHER_MAILBOX, _lease())
        # then both are refused (not as a block), and another mailbox is unaffected
        assert all(s.granted for s in first) and second.granted
        assert over_1 == Slot(granted=False) and over_2 == Slot(granted=False)
        assert other_mailbox.granted
        # and a release by one process frees a slot for the other
        await t2.release(MAILBOX, held_by_t2)
        assert (await t1.try_acquire(MAILBOX, _lease())).granted
        assert not (await t2.try_acquire(MAILBOX, _lease())).granted

    _run(redis_url, scenario)


def test_throttle_concurrent_acquires_never_exceed_limit(redis_url: str) -> None:
    async def scenario(r: Any, t1: MailboxThrottle, t2: MailboxThrottle) -> list[Slot]:
        return list(await asyncio.gather(*(t.try_acquire(MAILBOX, _lease()) for t in (t1, t2) for _ in range(20))))

    slots = _run(redis_url, scenario)

    assert sum(s.granted for s in slots) == 4


def test_throttle_expired_lease_frees_slot(redis_url: str) -> None:
    async def scenario(r: Any, t1: MailboxThrottle, t2: MailboxThrottle) -> None:
        # given four slots taken by a process that then dies (never releases)
        assert all([(await t1.try_acquire(MAILBOX, _lease())).granted for _ in range(4)])
        assert not (await t2.try_acquire(MAILBOX, _lease())).granted
        # when the 50 ms leases run out, then the other process gets a slot
        late = _lease()
        slot = await _poll(lambda: _granted(t2, late))
        assert slot.granted

    _run(redis_url, scenario, lease_ms=50)


async def _granted(t: MailboxThrottle, lease_id: str) -> Slot | None:
    slot = await t.try_acquire(MAILBOX, lease_id)
    return slot if slot.granted else None


def test_throttle_block_refuses_every_instance_with_wait(redis_url: str) -> None:
    async def scenario(r: Any, t1: MailboxThrottle, t2: MailboxThrottle) -> None:
        until_ms = await t1.block(MAILBOX, 5_000)

        refused = await t2.try_acquire(MAILBOX, _lease())
        other = await t2.try_acquire(OTHER_MAILBOX, _lease())

        redis_now_s, redis_now_us = await r.time()
        assert until_ms - (redis_now_s * 1000 + redis_now_us // 1000) > 4_000
        assert refused.granted is False and refused.blocked is True
        assert 4_000 < refused.wait_ms <= 5_000
        assert other.granted

    _run(redis_url, scenario)


def test_throttle_block_never_shortens(redis_url: str) -> None:
    async def scenario(r: Any, t1: MailboxThrottle, t2: MailboxThrottle) -> None:
        long_until = await t1.block(MAILBOX, 5_000)

        short_until = await t2.block(MAILBOX, 10)
        slot = await t2.try_acquire(MAILBOX, _lease())

        assert short_until == long_until
        assert slot.blocked and slot.wait_ms > 4_000

    _run(redis_url, scenario)


def test_throttle_block_expires(redis_url: str) -> None:
    async def scenario(r: Any, t1: MailboxThrottle, t2: MailboxThrottle) -> None:
        await t1.block(MAILBOX, 50)
        assert (await t2.try_acquire(MAILBOX, _lease())).blocked

        slot = await _poll(lambda: _granted(t2, _lease()))

        assert slot.granted

    _run(redis_url, scenario)


def test_throttle_acquire_returns_at_once_when_blocked(redis_url: str) -> None:
    async def scenario(r: Any, t1: MailboxThrottle, t2: MailboxThrottle) -> tuple[Slot, float]:
        await t1.block(MAILBOX, 60_000)
        started = time.monotonic()
        slot = await t2.acquire(MAILBOX, _lease(), max_wait_ms=30_000)
        return slot, time.monotonic() - started

    slot, elapsed_s = _run(redis_url, scenario)

    assert slot.blocked and not slot.granted
    assert elapsed_s < 5.0  # did not sleep out the block nor the 30 s max wait


def test_throttle_acquire_waits_for_a_freed_slot(redis_url: str) -> None:
    async def scenario(r: Any, t1: MailboxThrottle, t2: MailboxThrottle) -> Slot:
        for _ in range(4):
            assert (await t1.try_acquire(MAILBOX, _lease())).granted
        return await t2.acquire(MAILBOX, _lease(), max_wait_ms=10_000)

    assert _run(redis_url, scenario, lease_ms=50).granted


def test_throttle_acquire_gives_up_after_max_wait(redis_url: str) -> None:
    async def scenario(r: Any, t1: MailboxThrottle, t2: MailboxThrottle) -> Slot:
        for _ in range(4):
            assert (await t1.try_acquire(MAILBOX, _lease())).granted
        return await t2.acquire(MAILBOX, _lease(), max_wait_ms=100)

    slot = _run(redis_url, scenario)

    assert slot == Slot(granted=False)


def test_throttle_block_locally_refuses_only_this_process(redis_url: str) -> None:
    async def scenario(r: Any, t1: MailboxThrottle, t2: MailboxThrottle) -> None:
        t1.block_locally(MAILBOX, 5_000)

        remaining_ms = t1.local_block_ms(MAILBOX)
        here = await t1.try_acquire(MAILBOX, _lease())
        elsewhere = await t2.try_acquire(MAILBOX, _lease())

        assert 4_000 < remaining_ms <= 5_001
        assert here.blocked and not here.granted and 4_000 < here.wait_ms <= 5_001
        assert elsewhere.granted  # Redis has not heard of it
        assert t1.local_block_ms(OTHER_MAILBOX) == 0
        assert t2.local_block_ms(MAILBOX) == 0

    _run(redis_url, scenario)


def test_throttle_block_locally_keeps_the_longer_block(redis_url: str) -> None:
    async def scenario(r: Any, t1: MailboxThrottle, t2: MailboxThrottle) -> None:
        t1.block_locally(MAILBOX, 5_000)
        t1.block_locally(MAILBOX, 10)

        assert t1.local_block_ms(MAILBOX) > 4_000

    _run(redis_url, scenario)


def test_throttle_local_block_ends(redis_url: str) -> None:
    async def scenario(r: Any, t1: MailboxThrottle, t2: MailboxThrottle) -> None:
        t1.block_locally(MAILBOX, 30)

        async def unblocked() -> bool:
            return t1.local_block_ms(MAILBOX) == 0

        await _poll(unblocked)
        assert (await t1.try_acquire(MAILBOX, _lease())).granted

    _run(redis_url, scenario)


def test_throttle_pacing_spaces_sends_across_instances(redis_url: str) -> None:
    async def scenario(r: Any, t1: MailboxThrottle, t2: MailboxThrottle) -> None:
        lane1, lane2 = _lease(), _lease()
        assert (await t1.try_acquire(MAILBOX, lane1)).granted
        assert (await t2.try_acquire(MAILBOX, lane2)).granted

        first = await t1.begin_send(MAILBOX, lane1, "n1")
        paced = await t2.begin_send(MAILBOX, lane2, "n2")

        assert first.granted
        assert paced.granted is False and paced.blocked is False
        assert 0 < paced.wait_ms <= 10_000

    _run(redis_url, scenario, pacing_ms=10_000)


def test_throttle_pacing_allows_the_next_send_after_interval(redis_url: str) -> None:
    async def scenario(r: Any, t1: MailboxThrottle, t2: MailboxThrottle) -> None:
        lane = _lease()
        assert (await t1.try_acquire(MAILBOX, lane)).granted
        assert (await t1.begin_send(MAILBOX, lane, "n1")).granted
        assert not (await t1.begin_send(MAILBOX, lane, "n2")).granted

        async def sent() -> Slot | None:
            slot = await t1.begin_send(MAILBOX, lane, "n2")
            return slot if slot.granted else None

        assert (await _poll(sent)).granted

    _run(redis_url, scenario, pacing_ms=50)


def test_throttle_begin_send_sets_mark_only_on_a_held_slot(redis_url: str) -> None:
    async def scenario(r: Any, t1: MailboxThrottle, t2: MailboxThrottle) -> None:
        lane = _lease()
        assert (await t1.try_acquire(MAILBOX, lane)).granted
        assert await r.exists(mark_key("n1")) == 0  # holding a slot is not sending

        granted = await t1.begin_send(MAILBOX, lane, "n1")
        not_held = await t2.begin_send(MAILBOX, _lease(), "n2")

        assert granted.granted
        assert await r.get(mark_key("n1")) == b"1"
        assert MARK_TTL_S - 60 < await r.ttl(mark_key("n1")) <= MARK_TTL_S
        assert not_held == Slot(granted=False)
        assert await r.exists(mark_key("n2")) == 0

    _run(redis_url, scenario)


def test_throttle_begin_send_refuses_while_blocked(redis_url: str) -> None:
    async def scenario(r: Any, t1: MailboxThrottle, t2: MailboxThrottle) -> None:
        lane = _lease()
        assert (await t1.try_acquire(MAILBOX, lane)).granted
        await t2.block(MAILBOX, 5_000)

        slot = await t1.begin_send(MAILBOX, lane, "n1")

        assert slot.granted is False and slot.blocked is True and slot.wait_ms > 4_000
        assert await r.exists(mark_key("n1")) == 0

    _run(redis_url, scenario)


def test_sendmarks_key_names_the_notification() -> None:
    assert mark_key("abc123") == "tm:sendmark:abc123"


def test_sendmarks_mark_accepted_changes_only_an_existing_send_mark(redis_url: str) -> None:
    async def scenario(r: Any, t1: MailboxThrottle, t2: MailboxThrottle) -> None:
        lane = _lease()
        assert (await t1.try_acquire(MAILBOX, lane)).granted
        assert (await t1.begin_send(MAILBOX, lane, "n1")).granted

        marks = SendMarks(r)
        await marks.mark_accepted_now("n1")
        await marks.mark_accepted_now("never-started")  # no mark (never sent, or Redis lost it): nothing to say

        assert await r.get(mark_key("n1")) == ACCEPTED_MARK.encode()
        assert await r.ttl(mark_key("n1")) > MARK_TTL_S - 60
        assert await r.exists(mark_key("never-started")) == 0

    _run(redis_url, scenario)
