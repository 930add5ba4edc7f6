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
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import aiohttp
from aiohttp.connector import Connection

from shared.errors import RequestWithheld

Gate = Callable[[], Awaitable[int]]
_GATE: ContextVar[Gate | None] = ContextVar("tenantmail_send_gate", default=None)


@contextmanager
def gated(gate: Gate | None) -> Iterator[None]:
    """Run the requests made inside the block through `gate` once each has its connection."""
    token = _GATE.set(gate)
    try:
        yield
    finally:
        _GATE.reset(token)


class GatedConnector(aiohttp.TCPConnector):
    """A TCPConnector that runs the current request's gate (if any) on the connection it hands over."""

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Connection:
        """aiohttp's connect, then the gate: a blocked mailbox gives the connection back and raises
        `RequestWithheld`."""
        conn = await super().connect(req, traces, timeout)
        gate = _GATE.get()
        if gate is None:
            return conn
        try:
            wait_ms = await gate()
        except BaseException:
            conn.release()
            raise
        if wait_ms > 0:
            conn.release()  # unused: back to the pool for the next request
            raise RequestWithheld(wait_ms)
        return conn
