"""Redis calls made on one event loop while another round trip is in flight leave together, as one pipeline.

Every send makes a Redis call of its own (`worker.throttle.MailboxThrottle.begin_send`), and hundreds of
sends run at once on a worker's loop. Through redis-py one by one, each call checks a connection out of the
pool, writes it with a system call of its own and waits for its own answer: at a thousand sends a second
that was a sixth of the worker's CPU (docs/benchmarks.md, "Profile"). Here a call joins a queue; while one
pipeline is on the wire the queue fills, and when its answers are in the whole queue leaves as the next
pipeline (no transaction: each command, a Lua script included, is still atomic on its own, and none
depends on another). Under load a round trip carries dozens of calls; alone, a call leaves at once.

Scripts go as EVALSHA; when Redis does not know one (its first use, or after a restart or a SCRIPT FLUSH) it
is loaded once and its calls go again with the next pipeline. A Redis error of one command (a script error) is raised to
its caller only; a connection that fails fails every call of that pipeline, with redis-py's own error, for
the caller's `redis_boundary` to turn into `RedisUnavailable`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoScriptError


@dataclass(slots=True)
class _Call:
    command: tuple[Any, ...]
    script: Any  # redis-py's AsyncScript, or None for a plain command
    future: asyncio.Future[Any]
    reloaded: bool = False  # sent again after loading its script: a second NOSCRIPT is an error


class RedisBatch:
    """One process's queue of Redis calls, sent as pipelines, at most `in_flight` at a time."""

    def __init__(self, redis: Any, *, in_flight: int = 1) -> None:
        self._redis = redis
        self._queue: list[_Call] = []
        self._in_flight = 0
        self._max_in_flight = in_flight
        self._tasks: set[asyncio.Future[None]] = set()  # the loop keeps weak references only
        self.round_trips = 0  # pipelines sent (tests read these)
        self.calls = 0

    def script(self, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> asyncio.Future[Any]:
        """Run a registered script (redis-py `AsyncScript`); its answer as the script's own call would give it."""
        return self._enqueue(("EVALSHA", script.sha, len(keys), *keys, *args), script)

    def command(self, *args: Any) -> asyncio.Future[Any]:
        """Run one command (`"ZREM", key, member`); its raw answer."""
        return self._enqueue(args, None)

    def _enqueue(self, command: tuple[Any, ...], script: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Call(command, script, future))
        self.calls += 1
        if self._in_flight < self._max_in_flight:
            self._in_flight += 1
            self._keep(self._drain())
        return future

    def _keep(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        """Send what is queued, then what queued meanwhile, until the queue is empty."""
        try:
            await asyncio.sleep(0)  # the calls made in this same moment join the first pipeline
            while self._queue:
                calls, self._queue = self._queue, []
                await self._send(calls)
        finally:
            self._in_flight -= 1

    async def _send(self, calls: list[_Call]) -> None:
        self.round_trips += 1
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for call in calls:
                    pipe.execute_command(*call.command)
                answers = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # the connection failed (or the loop is closing): every call of it fails
            _fail(calls, exc)
            return
        unknown: list[_Call] = []
        for call, answer in zip(calls, answers, strict=True):
            if call.future.done():  # its caller gave up (cancelled)
                continue
            if isinstance(answer, NoScriptError) and call.script is not None and not call.reloaded:
                unknown.append(call)
            elif isinstance(answer, Exception):
                call.future.set_exception(answer)
            else:
                call.future.set_result(answer)
        if unknown:
            await self._load(unknown)

    async def _load(self, calls: list[_Call]) -> None:
        """Load the scripts Redis did not know, once each, and queue their calls for the next pipeline."""
        scripts = {call.script.sha: call.script for call in calls}
        try:
            for script in scripts.values():
                await self._redis.script_load(script.script)
        except BaseException as exc:
            _fail(calls, exc)
            return
        for call in calls:
            call.reloaded = True
        self._queue[:0] = calls


def _fail(calls: list[_Call], exc: BaseException) -> None:
    """Raise `exc` to every caller still waiting; a cancellation of the batch's own task goes on up."""
    for call in calls:
        if not call.future.done():
            call.future.set_exception(exc)
    if not isinstance(exc, Exception):
        raise exc
