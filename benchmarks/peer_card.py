"""Stronger peer (b): the design card done the obvious way. One Celery task per message; per worker
process one aiohttp session (on an event loop of its own, shared by the task threads) and one MSAL
`ConfidentialClientApplication` per tenant (MSAL's in-memory token cache); tenacity retries 429 and 5xx,
obeying Retry-After. No batching, no database, no fleet-wide throttle.

`celery -A benchmarks.peer_card -b REDIS_URL worker -P threads -c N -Q peer` runs it.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from typing import Any

import aiohttp
import msal
import requests
from celery import Celery
from tenacity import RetryCallState, retry, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from benchmarks.peer import QUEUE

TASK = "peer_card.send_mail"

app = Celery("tenantmail-peer-card")
app.conf.update(task_ignore_result=True, task_default_queue=QUEUE, broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False, worker_prefetch_multiplier=4)

_lock = threading.Lock()
_state: dict[str, Any] = {}
_apps: dict[str, msal.ConfidentialClientApplication] = {}


class Retryable(Exception):
    """A 429 or 5xx: tenacity tries again (after Retry-After when Graph gave one)."""

    def __init__(self, status: int, retry_after_s: float) -> None:
        super().__init__(status)
        self.retry_after_s = retry_after_s


def _loop_and_session(ca_path: str) -> tuple[asyncio.AbstractEventLoop, aiohttp.ClientSession]:
    with _lock:
        if "loop" not in _state:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="peer-loop", daemon=True).start()

            async def make() -> aiohttp.ClientSession:
                return aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                    limit=0, ssl=ssl.create_default_context(cafile=ca_path)), trust_env=False)

            _state["loop"], _state["session"] = loop, asyncio.run_coroutine_threadsafe(make(), loop).result()
        return _state["loop"], _state["session"]


def _token(endpoint: dict[str, Any], tenant: dict[str, str]) -> str:
    key = tenant["tenant_id"] + "/" + tenant["client_id"]
    with _lock:
        if key not in _apps:
            http = requests.Session()
            http.verify = endpoint["ca_path"]
            http.trust_env = False  # else REQUESTS_CA_BUNDLE from the environment wins over `verify`
            _apps[key] = msal.ConfidentialClientApplication(
                tenant["client_id"], client_credential=tenant["secret"], http_client=http,
                authority=f"https://{endpoint['authority']}/{tenant['tenant_id']}", instance_discovery=False)
        app_ = _apps[key]
    result = app_.acquire_token_for_client(scopes=["https://graph.microsoft.com/.default"])
    return str(result["access_token"])


_backoff = wait_exponential_jitter(initial=0.5, max=30)


def _wait_s(state: RetryCallState) -> float:
    """Retry-After when Graph gave one, else exponential backoff with jitter."""
    exc = state.outcome.exception() if state.outcome else None
    return max(getattr(exc, "retry_after_s", 0.0), _backoff(state))


@app.task(name=TASK)
@retry(retry=retry_if_exception_type(Retryable), stop=stop_after_attempt(8), wait=_wait_s, reraise=True)
def send_mail(endpoint: dict[str, Any], tenant: dict[str, str], message: dict[str, Any]) -> None:
    """Send one message: token from MSAL's cache, POST on the process's aiohttp session."""
    token = _token(endpoint, tenant)
    loop, session = _loop_and_session(endpoint["ca_path"])
    body = json.dumps({"message": {
        "subject": message["subject"], "body": {"contentType": "HTML", "content": message["body"]},
        "toRecipients": [{"emailAddress": {"address": a}} for a in message["to"]],
        "internetMessageHeaders": [{"name": "X-Tenantmail-Notification-Id", "value": message["id"]}]},
        "saveToSentItems": False})
    url = f"{endpoint['graph_base']}/users/{tenant['sender']}/sendMail"
    asyncio.run_coroutine_threadsafe(_post(session, url, token, body), loop).result(timeout=120)


async def _post(session: aiohttp.ClientSession, url: str, token: str, body: str) -> None:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with session.post(url, data=body, headers=headers) as resp:
        await resp.read()
        if resp.status == 429 or resp.status >= 500:
            raise Retryable(resp.status, float(resp.headers.get("Retry-After", "0") or 0))
        resp.raise_for_status()
