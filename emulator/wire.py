"""Helpers shared by the Entra and Graph handlers: delays, held requests, connection resets."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

from aiohttp import web

from emulator.faults import Hit

# Where handlers find the Emulator instance on the aiohttp app.
EMULATOR_KEY: web.AppKey[Any] = web.AppKey("emulator")
# Per-request notes (tenant, app, mailbox, ids) the request log middleware records.
NOTE_KEY: web.RequestKey[dict[str, Any]] = web.RequestKey("note", dict)


async def wait_for_fault(hit: Hit, base_delay_s: float) -> None:
    """Apply configured latency plus fault latency, then wait for any hold gates (asyncio only)."""
    delay_s = base_delay_s + hit.delay_s
    if delay_s > 0:
        await asyncio.sleep(delay_s)
    for gate in hit.gates:
        await gate.wait()


def abort_connection(request: web.Request) -> web.Response:
    """Reset the TCP connection (RST, no response) and return a placeholder the client never sees."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        transport.abort()
    request[NOTE_KEY]["reset"] = True
    return web.Response(status=599)
