"""The last check before a sendMail request is written: once its connection is in hand.

`worker.throttle.begin_send` admits a send a moment before it leaves, but the request can still wait
after that: for a connection from aiohttp's pool (every one busy during a catch-up), for a new TCP and
TLS connection, or for a starved event loop. A 429 for the same mailbox can arrive meanwhile, on
another lane of this process or at another worker; a request sent anyway lands inside the Retry-After
that Graph has just announced.

`GatedConnector.connect` runs the request's gate right after the connector hands over the connection,
which is right before aiohttp writes the request. The gate is a context variable set around one
request by `gated()` (`transport.graph.GraphClient.send_mail`), so every other use of the session is
untouched. A gate answers how many ms the mailbox is still blocked (0: go); when it is blocked the
connection goes back to the pool unused and `RequestWithheld` is raised: the request never left.
When it passes, the moment is stamped on the block's `Passage`: when the request left, which the attempt
records (a Retry-After check compares it with when the worker read a 429) and from which Graph's latency
is measured (a wait for a connection is not Graph's).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp.connector import Connection

from shared.errors import RequestWithheld

Gate = Callable[[], Awaitable[int]]


@dataclass(slots=True)
class Passage:
    """When the last request made inside a `gated()` block passed its gate (None until one did)."""

    at: float | None = None  # time.perf_counter()
    wall: datetime | None = None

    def stamp(self, perf_counter: float) -> None:
        self.at, self.wall = perf_counter, datetime.now(UTC)


_GATE: ContextVar[tuple[Gate, Passage] | None] = ContextVar("tenantmail_send_gate", default=None)


@contextmanager
def gated(gate: Gate | None) -> Iterator[Passage]:
    """Run the requests made inside the block through `gate` once each has its connection; the Passage
    yielded says when the last one passed (it stays empty without a gate)."""
    passage = Passage()
    token = _GATE.set((gate, passage) if gate is not None else None)
    try:
        yield passage
    finally:
        _GATE.reset(token)


class GatedConnector(aiohttp.TCPConnector):
    """A TCPConnector that runs the current request's gate (if any) on the connection it hands over."""

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Connection:
        """aiohttp's connect, then the gate: a blocked mailbox gives the connection back and raises
        `RequestWithheld`."""
        conn = await super().connect(req, traces, timeout)
        current = _GATE.get()
        if current is None:
            return conn
        gate, passage = current
        try:
            wait_ms = await gate()
        except BaseException:
            conn.release()
            raise
        if wait_ms > 0:
            conn.release()  # unused: back to the pool for the next request
            raise RequestWithheld(wait_ms)
        passage.stamp(time.perf_counter())
        return conn
