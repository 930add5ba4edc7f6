"""Stronger peer (a): the official Graph SDK in a Celery task, with one credential and one
`GraphServiceClient` per tenant cached for the life of the worker process.

The SDK is async and its httpx client belongs to one event loop, so the process runs one loop on a thread
of its own and every task thread hands its send to it (what a team that caches clients has to do with
Celery's threads pool). Everything else is as in `benchmarks.peer`.

`celery -A benchmarks.peer_cached -b REDIS_URL worker -P threads -c N -Q peer` runs it.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from typing import Any

from celery import Celery

from benchmarks.peer import QUEUE, _sdk_message

TASK = "peer_cached.send_mail"

app = Celery("tenantmail-peer-cached")
app.conf.update(task_ignore_result=True, task_default_queue=QUEUE, broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False, worker_prefetch_multiplier=4)

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_clients: dict[str, Any] = {}


def _process_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="peer-loop", daemon=True).start()
        return _loop


@app.task(name=TASK)
def send_mail(endpoint: dict[str, Any], tenant: dict[str, str], message: dict[str, Any]) -> None:
    """Send one message through the tenant's cached client."""
    asyncio.run_coroutine_threadsafe(_send(endpoint, tenant, message), _process_loop()).result(timeout=120)


def _client(endpoint: dict[str, Any], tenant: dict[str, str]) -> Any:
    import httpx
    from azure.identity.aio import ClientSecretCredential
    from kiota_authentication_azure.azure_identity_authentication_provider import (
        AzureIdentityAuthenticationProvider,
    )
    from msgraph import GraphRequestAdapter, GraphServiceClient
    from msgraph_core import GraphClientFactory

    key = tenant["tenant_id"] + "/" + tenant["client_id"]
    if key not in _clients:  # only the loop thread gets here: no lock needed
        credential = ClientSecretCredential(tenant["tenant_id"], tenant["client_id"], tenant["secret"],
                                            authority=endpoint["authority"], disable_instance_discovery=True,
                                            connection_verify=endpoint["ca_path"])
        auth = AzureIdentityAuthenticationProvider(credential, scopes=["https://graph.microsoft.com/.default"],
                                                   allowed_hosts=[endpoint["host"]])
        http = GraphClientFactory.create_with_default_middleware(client=httpx.AsyncClient(
            verify=ssl.create_default_context(cafile=endpoint["ca_path"]), trust_env=False))
        adapter = GraphRequestAdapter(auth, client=http)
        adapter.base_url = endpoint["graph_base"]
        _clients[key] = GraphServiceClient(request_adapter=adapter)
    return _clients[key]


async def _send(endpoint: dict[str, Any], tenant: dict[str, str], message: dict[str, Any]) -> None:
    from msgraph.generated.users.item.send_mail.send_mail_post_request_body import SendMailPostRequestBody

    body = SendMailPostRequestBody(message=_sdk_message(message), save_to_sent_items=False)
    await _client(endpoint, tenant).users.by_user_id(tenant["sender"]).send_mail.post(body)
