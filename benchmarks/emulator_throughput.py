"""How many sendMail requests/s the emulator answers: aiohttp client, 100 concurrent, HTTPS, no latency.

Run: python benchmarks/emulator_throughput.py [--requests 20000] [--concurrency 100] [--no-tls]
The emulator runs as its own process (EmulatorProcess); this process is the client. Prints one JSON
line with the measured figure, then a line of text.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time
import uuid
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emulator.demo import client_id_for, make_tenant, tenant_id_for
from emulator.testing import EmulatorProcess

TENANTS = 25
MAILBOXES_PER_TENANT = 4


def _body(index: int) -> bytes:
    message = {
        "message": {
            "subject": f"Benchmark {index}",
            "body": {"contentType": "Text", "content": "Hello from the throughput benchmark."},
            "toRecipients": [{"emailAddress": {"address": f"user{index % 50}@example.com"}}],
            "internetMessageHeaders": [{"name": "X-Tenantmail-Notification-Id", "value": str(index)}],
        },
        "saveToSentItems": False,
    }
    return json.dumps(message).encode()


async def _tokens(session: aiohttp.ClientSession, base_url: str) -> list[str]:
    tokens = []
    for index in range(TENANTS):
        form = {
            "client_id": client_id_for(index),
            "client_secret": f"secret-{index}",
            "grant_type": "client_credentials",
            "scope": "https://graph.microsoft.com/.default",
        }
        async with session.post(f"{base_url}/{tenant_id_for(index)}/oauth2/v2.0/token", data=form) as resp:
            resp.raise_for_status()
            tokens.append((await resp.json())["access_token"])
    return tokens


async def _run(base_url: str, ca_path: str | None, total: int, concurrency: int) -> dict[str, object]:
    ssl_ctx = ssl.create_default_context(cafile=ca_path) if ca_path else False
    connector = aiohttp.TCPConnector(limit=concurrency, ssl=ssl_ctx)
    statuses: dict[int, int] = {}
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
        tokens = await _tokens(session, base_url)
        # Each worker owns one (tenant, mailbox) pair, so per-mailbox concurrency stays at 1.
        targets = [
            (t, f"sender{m}@tenant{t}.example") for t in range(TENANTS) for m in range(MAILBOXES_PER_TENANT)
        ]
        next_index = iter(range(total))

        async def worker(slot: int) -> None:
            tenant, mailbox = targets[slot % len(targets)]
            url = f"{base_url}/v1.0/users/{mailbox}/sendMail"
            for index in next_index:
                headers = {
                    "Authorization": f"Bearer {tokens[tenant]}",
                    "client-request-id": str(uuid.uuid4()),
                    "Content-Type": "application/json",
                }
                async with session.post(url, data=_body(index), headers=headers) as resp:
                    await resp.read()
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(slot) for slot in range(concurrency)))
        elapsed_s = time.perf_counter() - started
    return {
        "requests": total,
        "concurrency": concurrency,
        "elapsed_s": round(elapsed_s, 3),
        "requests_per_s": round(total / elapsed_s, 1),
        "statuses": statuses,
        "tls": ca_path is not None,
    }


def main() -> int:
    """Start the emulator subprocess, measure, print the figure."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--no-tls", action="store_true")
    args = parser.parse_args()
    directory = {"tenants": [make_tenant(i, mailboxes=MAILBOXES_PER_TENANT) for i in range(TENANTS)]}
    with EmulatorProcess(directory=directory, tls=not args.no_tls) as handle:
        result = asyncio.run(_run(handle.base_url, handle.ca_path, args.requests, args.concurrency))
        result["accepted_by_emulator"] = handle.counters()["accepted"]
    print(json.dumps({"event": "benchmark.emulator_throughput", **result}))
    print(
        f"emulator sendMail throughput: {result['requests_per_s']} requests/s "
        f"({result['requests']} requests, {result['concurrency']} concurrent, tls={result['tls']})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
