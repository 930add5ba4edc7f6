"""The wire ceiling: a bare aiohttp client sending the same messages at the same per-mailbox concurrency.

No queue, no database, no Redis: tokens are fetched once per tenant and the request bodies are
rendered before the clock starts, so the figure is what one process and the emulator allow.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp

from shared.message import graph_request_body, parse_message


@dataclass
class Send:
    """One message for the wire client: which tenant, from which mailbox, the rendered body."""

    tenant_index: int
    mailbox: str
    body: bytes


@dataclass
class WireRun:
    """What the wire client measured."""

    messages: int
    accepted: int
    elapsed_s: float
    statuses: dict[int, int]

    @property
    def messages_per_s(self) -> float:
        return self.accepted / self.elapsed_s if self.elapsed_s else 0.0


def render(items: list[tuple[int, str, dict[str, Any]]]) -> list[Send]:
    """(tenant index, sender address, producer message) -> rendered sendMail bodies."""
    return [Send(t, sender, graph_request_body(parse_message(m), sender_address=sender, sender_name=None,
                                               reply_to=None, notification_id=f"wire-{i}", checked=True))
            for i, (t, sender, m) in enumerate(items)]


def run_wire(emu: Any, sends: list[Send], credentials: dict[int, tuple[str, str, str]],
             per_mailbox: int) -> WireRun:
    """Send everything with at most `per_mailbox` requests in flight per mailbox."""
    return asyncio.run(_run(emu, sends, credentials, per_mailbox))


async def _run(emu: Any, sends: list[Send], credentials: dict[int, tuple[str, str, str]],
               per_mailbox: int) -> WireRun:
    ssl_ctx = ssl.create_default_context(cafile=emu.ca_path) if emu.ca_path else False
    mailboxes = {s.mailbox for s in sends}
    connector = aiohttp.TCPConnector(limit=per_mailbox * len(mailboxes), ssl=ssl_ctx)
    statuses: Counter[int] = Counter()
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
        tokens = {t: await _token(session, emu.base_url, *cred) for t, cred in credentials.items()}
        queues: dict[str, list[Send]] = {m: [] for m in mailboxes}
        for s in sends:
            queues[s.mailbox].append(s)

        async def lane(mailbox: str, mine: list[Send]) -> None:
            url = f"{emu.graph_base_url}/users/{mailbox}/sendMail"
            while mine:
                s = mine.pop()
                headers = {"Authorization": f"Bearer {tokens[s.tenant_index]}", "Content-Type": "application/json",
                           "client-request-id": str(uuid.uuid4())}
                async with session.post(url, data=s.body, headers=headers) as resp:
                    await resp.read()
                    statuses[resp.status] += 1

        started = time.perf_counter()
        await asyncio.gather(*(lane(m, q) for m, q in queues.items() for _ in range(per_mailbox)))
        elapsed_s = time.perf_counter() - started
    return WireRun(len(sends), statuses[202], elapsed_s, dict(statuses))


async def _token(session: aiohttp.ClientSession, base_url: str, tenant_id: str, client_id: str,
                 secret: str) -> str:
    form = {"client_id": client_id, "client_secret": secret, "grant_type": "client_credentials",
            "scope": "https://graph.microsoft.com/.default"}
    async with session.post(f"{base_url}/{tenant_id}/oauth2/v2.0/token", data=form) as resp:
        resp.raise_for_status()
        return str((await resp.json())["access_token"])
