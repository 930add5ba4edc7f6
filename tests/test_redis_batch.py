"""transport.redis_batch.RedisBatch against a real Redis: calls made together leave together, each gets its
own answer or error, a script Redis forgot is loaded again, and a dead connection fails every call."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as redis_async
from redis.exceptions import ResponseError

from shared.errors import RedisUnavailable
from transport.redis_batch import RedisBatch
from transport.redis_errors import redis_boundary

_INCR_BY = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
_BAD = "return redis.call('NOSUCHCOMMAND')"


def _run(url: str, scenario: Callable[[Any, RedisBatch], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        r = redis_async.Redis.from_url(url)
        try:
            return await scenario(r, RedisBatch(r))
        finally:
            await r.aclose()
    return asyncio.run(main())


def test_calls_made_while_a_round_trip_is_in_flight_leave_together_and_each_gets_its_own_answer(
        redis_url: str) -> None:
    async def scenario(r: Any, batch: RedisBatch) -> tuple[list[int], int, int]:
        await r.delete("tm:test:batch:a", "tm:test:batch:b")
        incr = r.register_script(_INCR_BY)
        answers = await asyncio.gather(*(batch.script(incr, [f"tm:test:batch:{'ab'[i % 2]}"], [i + 1])
                                         for i in range(200)),
                                       batch.command("GET", "tm:test:batch:a"))
        total_a = int(await r.get("tm:test:batch:a"))
        return [int(a) for a in answers[:-1]], total_a, batch.round_trips

    answers, total_a, round_trips = _run(redis_url, scenario)
    # each script ran once, in the order called: the running sums of its own key
    assert answers[-2:] == [sum(range(1, 200, 2)), sum(range(2, 201, 2))]
    assert total_a == sum(range(1, 200, 2))
    assert round_trips < 20, round_trips  # 201 calls, a handful of pipelines


def test_an_error_of_one_call_is_raised_to_that_caller_only(redis_url: str) -> None:
    async def scenario(r: Any, batch: RedisBatch) -> list[Any]:
        bad, incr = r.register_script(_BAD), r.register_script(_INCR_BY)
        await r.delete("tm:test:batch:c")
        return await asyncio.gather(batch.script(incr, ["tm:test:batch:c"], [1]), batch.script(bad, [], []),
                                    batch.script(incr, ["tm:test:batch:c"], [1]), return_exceptions=True)

    first, error, third = _run(redis_url, scenario)
    assert (first, third) == (1, 2)
    assert isinstance(error, ResponseError)


def test_a_script_redis_no_longer_knows_is_loaded_again(redis_url: str) -> None:
    async def scenario(r: Any, batch: RedisBatch) -> list[Any]:
        incr = r.register_script(_INCR_BY)
        await r.delete("tm:test:batch:d")
        assert await batch.script(incr, ["tm:test:batch:d"], [5]) == 5
        await r.script_flush()  # as after a Redis restart without its scripts
        return await asyncio.gather(*(batch.script(incr, ["tm:test:batch:d"], [1]) for _ in range(3)))

    assert sorted(_run(redis_url, scenario)) == [6, 7, 8]


def test_a_redis_that_does_not_answer_fails_every_call_as_unavailable() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def scenario(r: Any, batch: RedisBatch) -> list[Any]:
        incr = r.register_script(_INCR_BY)

        async def call(i: int) -> Any:
            with redis_boundary("test"):
                return await batch.script(incr, ["k"], [i])
        return await asyncio.gather(*(call(i) for i in range(5)), return_exceptions=True)

    async def main() -> list[Any]:
        r = redis_async.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1, retry_on_error=[])
        try:
            return await scenario(r, RedisBatch(r))
        finally:
            await r.aclose()

    errors = asyncio.run(main())
    assert len(errors) == 5 and all(isinstance(e, RedisUnavailable) for e in errors), errors


@pytest.mark.parametrize("cancelled", [1, 3])
def test_a_caller_that_gives_up_leaves_the_others_their_answers(redis_url: str, cancelled: int) -> None:
    async def scenario(r: Any, batch: RedisBatch) -> list[Any]:
        incr = r.register_script(_INCR_BY)
        await r.delete("tm:test:batch:e")
        futures = [batch.script(incr, ["tm:test:batch:e"], [1]) for _ in range(4)]
        futures[cancelled].cancel()
        return await asyncio.gather(*futures, return_exceptions=True)

    answers = _run(redis_url, scenario)
    assert isinstance(answers[cancelled], asyncio.CancelledError)
    # the cancelled call was still sent (it was queued): the others see its increment
    assert [a for i, a in enumerate(answers) if i != cancelled] == [n for n in range(1, 5) if n != cancelled + 1]
