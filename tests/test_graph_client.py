"""transport.graph.GraphClient with a real aiohttp session against the emulator (faults injected there)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from emulator.demo import DEMO_CEO, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_SENDER, DEMO_TENANT_ID
from shared.errors import AmbiguousOutcome, PermanentError, Throttled, TransientError
from shared.message import graph_request_body, parse_message
from transport.graph import GraphClient, GraphResponse
from worker.retry_policy import classify


def _body(sender: str = DEMO_SENDER, notification_id: str = "n-1") -> bytes:
    message = parse_message({"to": ["user@example.org"], "subject": "Review", "body": "Please review."})
    return graph_request_body(message, sender_address=sender, sender_name="Governance", reply_to=None,
                              notification_id=notification_id)


def _run(emulator: Any, scenario: Callable[[GraphClient, str], Awaitable[Any]], *,
         timeout: aiohttp.ClientTimeout | None = None) -> Any:
    """Run `scenario(client, token)` with a real session trusting the emulator's CA."""
    async def main() -> Any:
        ssl_ctx = ssl.create_default_context(cafile=str(emulator.ca_path))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_ctx), trust_env=False,
                                         timeout=timeout or aiohttp.ClientTimeout(total=30)) as session:
            async with session.post(
                f"{emulator.base_url}/{DEMO_TENANT_ID}/oauth2/v2.0/token",
                data={"grant_type": "client_credentials", "client_id": DEMO_CLIENT_ID,
                      "client_secret": DEMO_CLIENT_SECRET, "scope": "https://graph.microsoft.com/.default"},
                timeout=aiohttp.ClientTimeout(total=30),
            ) as resp:
                assert resp.status == 200, await resp.text()
                token = (await resp.json())["access_token"]
            return await scenario(GraphClient(session), token)
    return asyncio.run(main())


def _send(emulator: Any, *, mailbox: str = DEMO_SENDER, body: bytes | None = None,
          timeout: aiohttp.ClientTimeout | None = None, crid: str = "crid-test") -> GraphResponse:
    async def scenario(client: GraphClient, token: str) -> GraphResponse:
        return await client.send_mail(emulator.graph_base_url, token, mailbox, body or _body(), crid)
    return _run(emulator, scenario, timeout=timeout)


def _send_error(emulator: Any, expected: type[Exception], **kw: Any) -> Any:
    async def scenario(client: GraphClient, token: str) -> Any:
        with pytest.raises(expected) as info:
            await client.send_mail(kw.get("graph_base", emulator.graph_base_url), token, DEMO_SENDER, _body(),
                                   "crid-err")
        return info.value
    return _run(emulator, scenario, timeout=kw.get("timeout"))


def test_graph_client_202_parsed_with_request_id(emulator: Any) -> None:
    crid = str(uuid.uuid4())

    resp = _send(emulator, crid=crid)

    assert resp.status == 202
    assert resp.code is None and resp.message is None
    assert resp.request_id and resp.client_request_id == crid
    assert resp.retry_after_s is None and resp.retry_after_present is False
    assert resp.latency_ms > 0
    [sent] = emulator.outbox()
    assert sent["request_id"] == resp.request_id and sent["client_request_id"] == crid
    assert classify(resp) is None


def test_graph_client_access_denied_code_from_json_envelope(emulator: Any) -> None:
    resp = _send(emulator, mailbox=DEMO_CEO, body=_body(sender=DEMO_CEO))

    assert resp.status == 403
    assert resp.code == "ErrorAccessDenied"
    assert resp.message and resp.request_id
    assert type(classify(resp)) is PermanentError


def test_graph_client_bad_token_is_401(emulator: Any) -> None:
    async def scenario(client: GraphClient, token: str) -> GraphResponse:
        return await client.send_mail(emulator.graph_base_url, emulator.mint_token(signed_by="other"),
                                      DEMO_SENDER, _body(), "crid-401")

    resp = _run(emulator, scenario)

    assert resp.status == 401 and resp.code
    assert not emulator.outbox()


@pytest.mark.parametrize(("header", "expected_s"), [("2", 2.0), ("2.128", 2.128), (None, None)])
def test_graph_client_429_retry_after(emulator: Any, header: str | None, expected_s: float | None) -> None:
    emulator.add_fault(kind="429", route="sendMail", count=1, retry_after=header)

    resp = _send(emulator)

    assert resp.status == 429 and resp.code
    assert resp.retry_after_present is (header is not None)
    assert resp.retry_after_s == (pytest.approx(expected_s) if expected_s is not None else None)
    error = classify(resp)
    assert isinstance(error, Throttled) and error.retry_after_s == resp.retry_after_s


def test_graph_client_html_503_gives_http_code(emulator: Any) -> None:
    emulator.add_fault(kind="503", route="sendMail", count=1, body="html")

    resp = _send(emulator)

    assert resp.status == 503
    assert resp.code == "HTTP503"
    assert resp.message and "\n" not in resp.message and len(resp.message) <= 300
    assert type(classify(resp)) is TransientError


def test_graph_client_json_status_fault_code_and_message(emulator: Any) -> None:
    emulator.add_fault(kind="status", route="sendMail", count=1, status=400, code="ErrorInvalidRecipients",
                       message="At least one recipient is not valid.")

    resp = _send(emulator)

    assert (resp.status, resp.code, resp.message) == (400, "ErrorInvalidRecipients",
                                                      "At least one recipient is not valid.")


def test_graph_client_504_after_commit_is_ambiguous(emulator: Any) -> None:
    emulator.add_fault(kind="504_after_commit", route="sendMail", count=1)

    resp = _send(emulator)

    assert resp.status == 504
    assert isinstance(classify(resp), AmbiguousOutcome)
    assert len(emulator.outbox()) == 1  # the trap: it was sent


def test_graph_client_reset_is_ambiguous_connection_reset(emulator: Any) -> None:
    emulator.add_fault(kind="reset", route="sendMail", count=1)

    error = _send_error(emulator, AmbiguousOutcome)

    assert error.code == "ConnectionReset"
    assert error.client_request_id == "crid-err"
    assert emulator.counters()["reset_connections"] == 1


def test_graph_client_refused_connection_is_transient(emulator: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]

    error = _send_error(emulator, TransientError, graph_base=f"https://127.0.0.1:{closed_port}/v1.0")

    assert type(error) is TransientError
    assert error.code == "ConnectionRefused"
    assert error.client_request_id == "crid-err"


def test_graph_client_timeout_is_ambiguous(emulator: Any) -> None:
    emulator.add_fault(kind="latency", route="sendMail", latency_ms=5_000)

    error = _send_error(emulator, AmbiguousOutcome, timeout=aiohttp.ClientTimeout(total=0.5))

    assert error.code == "Timeout"
    assert emulator.counters()["send_requests"] >= 1  # it did reach Graph
