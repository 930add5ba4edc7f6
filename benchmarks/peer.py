"""The peer: what a team would write today, a Celery task per message around the official Graph SDK.

The task follows the msgraph-sdk and azure-identity documentation: it creates a ClientSecretCredential
and a GraphServiceClient for the message's tenant, sends, and closes them. The only departures are
the ones needed to reach the emulator (authority, CA bundle, base URL; see docs/emulator.md).

`celery -A benchmarks.peer -b REDIS_URL worker -P threads -c N -Q peer` runs it; `run_peer` starts
such workers, publishes the messages and measures.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery

from benchmarks.harness import _cpu_s

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "peer"
TASK = "peer.send_mail"

app = Celery("tenantmail-peer")
app.conf.update(task_ignore_result=True, task_default_queue=QUEUE, broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False, worker_prefetch_multiplier=4)


@app.task(name=TASK)
def send_mail(endpoint: dict[str, Any], tenant: dict[str, str], message: dict[str, Any]) -> None:
    """Send one message with the SDK: a new credential and client for the tenant, as documented."""
    asyncio.run(_send(endpoint, tenant, message))


async def _send(endpoint: dict[str, Any], tenant: dict[str, str], message: dict[str, Any]) -> None:
    import httpx
    from azure.identity.aio import ClientSecretCredential
    from kiota_authentication_azure.azure_identity_authentication_provider import (
        AzureIdentityAuthenticationProvider,
    )
    from msgraph import GraphRequestAdapter, GraphServiceClient
    from msgraph.generated.users.item.send_mail.send_mail_post_request_body import SendMailPostRequestBody
    from msgraph_core import GraphClientFactory

    credential = ClientSecretCredential(tenant["tenant_id"], tenant["client_id"], tenant["secret"],
                                        authority=endpoint["authority"], disable_instance_discovery=True,
                                        connection_verify=endpoint["ca_path"])
    auth = AzureIdentityAuthenticationProvider(credential, scopes=["https://graph.microsoft.com/.default"],
                                               allowed_hosts=[endpoint["host"]])
    http = GraphClientFactory.create_with_default_middleware(
        client=httpx.AsyncClient(verify=ssl.create_default_context(cafile=endpoint["ca_path"]), trust_env=False))
    adapter = GraphRequestAdapter(auth, client=http)
    adapter.base_url = endpoint["graph_base"]
    client = GraphServiceClient(request_adapter=adapter)
    body = SendMailPostRequestBody(message=_sdk_message(message), save_to_sent_items=False)
    try:
        await client.users.by_user_id(tenant["sender"]).send_mail.post(body)
    finally:
        await credential.close()
        await http.aclose()


def _sdk_message(message: dict[str, Any]) -> Any:
    from msgraph.generated.models.body_type import BodyType
    from msgraph.generated.models.email_address import EmailAddress
    from msgraph.generated.models.internet_message_header import InternetMessageHeader
    from msgraph.generated.models.item_body import ItemBody
    from msgraph.generated.models.message import Message
    from msgraph.generated.models.recipient import Recipient

    return Message(
        subject=message["subject"],
        body=ItemBody(content_type=BodyType.Html, content=message["body"]),
        to_recipients=[Recipient(email_address=EmailAddress(address=a)) for a in message["to"]],
        internet_message_headers=[InternetMessageHeader(name="X-Tenantmail-Notification-Id",
                                                        value=message["id"])],
    )


@dataclass
class PeerRun:
    """One peer measurement at one threads-pool concurrency."""

    concurrency: int
    messages: int
    accepted: int
    elapsed_s: float
    cpu_s: float

    @property
    def messages_per_s(self) -> float:
        return self.accepted / self.elapsed_s if self.elapsed_s else 0.0


def run_peer(bench: Any, jobs: list[tuple[dict[str, str], dict[str, Any]]], *, processes: int,
             concurrency: int, timeout_s: float, app_module: str = "benchmarks.peer", task: str = TASK) -> PeerRun:
    """Start `processes` peer workers of `app_module`, send `jobs` through them as `task`, stop them;
    emulator counters are reset."""
    emu = bench.emulator
    host = emu.base_url.split("://", 1)[1]
    endpoint = {"authority": host, "host": host.split(":")[0], "ca_path": emu.ca_path,
                "graph_base": emu.graph_base_url}
    broker = bench.env["REDIS_URL"]
    producer = Celery("tenantmail-peer-producer", broker=broker)
    procs = [_start_worker(bench, broker, concurrency, i, app_module) for i in range(processes)]
    try:
        warm = jobs[: processes * 2]
        emu.control.reset()
        for tenant, message in warm:  # imports and first connections happen before the clock starts
            producer.send_task(task, args=(endpoint, tenant, message), queue=QUEUE)
        _wait_accepted(emu, len(warm), timeout_s=120, what="peer warm-up")
        emu.control.reset()
        cpu0 = sum(_cpu_s(p.pid) for p in procs)
        t0 = time.time()
        for tenant, message in jobs:
            producer.send_task(task, args=(endpoint, tenant, message), queue=QUEUE)
        accepted, t_last = _wait_accepted(emu, len(jobs), timeout_s=timeout_s, what="peer run")
        cpu = sum(_cpu_s(p.pid) for p in procs) - cpu0
        return PeerRun(concurrency, len(jobs), accepted, t_last - t0, cpu)
    finally:
        producer.close()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _start_worker(bench: Any, broker: str, concurrency: int, index: int, app_module: str) -> subprocess.Popen[bytes]:
    log = open(bench.tmp / f"{app_module.rsplit('.', 1)[-1]}{index}-c{concurrency}.log", "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", app_module, "-b", broker, "worker", "-P", "threads",
         "-c", str(concurrency), "-Q", QUEUE, "-n", f"peer{index}@%h", "--without-gossip", "--without-mingle",
         "--without-heartbeat", "--loglevel", "WARNING"],
        env=bench.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def _wait_accepted(emu: Any, count: int, *, timeout_s: float, what: str) -> tuple[int, float]:
    """Wait until the emulator accepted `count` messages (or nothing moved for 15 s); (accepted, when)."""
    deadline = time.monotonic() + timeout_s
    last_seen, last_change = -1, time.monotonic()
    t_last = time.time()
    while True:
        accepted = int(emu.control.counters()["accepted"])
        if accepted != last_seen:
            last_seen, last_change, t_last = accepted, time.monotonic(), time.time()
        if accepted >= count:
            return accepted, t_last
        if time.monotonic() > deadline or time.monotonic() - last_change > 15:
            if accepted == 0:
                raise RuntimeError(f"{what}: the emulator accepted nothing")
            return accepted, t_last
        time.sleep(0.1)
