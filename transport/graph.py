"""Microsoft Graph sendMail over one shared aiohttp session.

This is the boundary where aiohttp's exceptions become ours: a failure to connect means the
request never left (TransientError); a timeout, reset or disconnect after that means it may have
been accepted (AmbiguousOutcome). HTTP responses are returned as `GraphResponse` and classified
by `worker.retry_policy`. A request may carry a gate (`transport.send_gate`) that can still stop it,
as `RequestWithheld`, once its connection is acquired: the session's connector must be a
`GatedConnector` for the gate to run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

import aiohttp
import orjson

from shared.codes import Code
from shared.errors import AmbiguousOutcome, TransientError
from transport.send_gate import Gate, gated


@dataclass(frozen=True, slots=True)
class GraphResponse:
    """What Graph answered to one sendMail."""

    status: int
    request_id: str | None
    client_request_id: str
    code: str | None
    message: str | None
    retry_after_s: float | None
    retry_after_present: bool
    latency_ms: float  # from when the request left (its gate passed) to the answer read
    sent_at: datetime | None = None  # when a gated request passed its gate (transport.send_gate)


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: integers and fractions ("2.128"); HTTP dates are not sent by Graph."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


class GraphClient:
    """Sends Graph requests (sendMail, and the draft and upload calls of transport.graph_upload) and
    reports what happened."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def send_mail(
        self, graph_base: str, token: str, mailbox: str, body: bytes, client_request_id: str, *,
        gate: Gate | None = None,
    ) -> GraphResponse:
        """POST {graph_base}/users/{mailbox}/sendMail; raises TransientError or AmbiguousOutcome, or
        RequestWithheld when `gate` stops it before it is written."""
        url = f"{mailbox_url(graph_base, mailbox)}/sendMail"
        response, _ = await self.call("POST", url, client_request_id, token=token, body=body, gate=gate)
        return response

    async def call(self, method: str, url: str, client_request_id: str, *, token: str | None = None,
                   body: bytes | None = None, content_type: str = "application/json",
                   headers: dict[str, str] | None = None, gate: Gate | None = None) -> tuple[GraphResponse, bytes]:
        """One Graph request and its raw answer (a bearer `token` unless None: upload URLs carry their own);
        raises TransientError (it never left) or AmbiguousOutcome (it may have been received), or RequestWithheld
        when `gate` stops it before it is written (transport.send_gate)."""
        sent = {"client-request-id": client_request_id, "return-client-request-id": "true", **(headers or {})}
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        if body is not None:
            sent["Content-Type"] = content_type
        started = time.perf_counter()
        try:
            with gated(gate) as passage:
                async with self._session.request(method, url, data=body, headers=sent) as resp:
                    raw = await resp.read()
                    return _response(resp, raw, client_request_id, started if passage.at is None else passage.at,
                                     passage.wall), raw
        except aiohttp.ClientConnectorError as exc:
            raise TransientError(
                f"cannot connect to Graph: {exc.os_error or exc}", code=Code.CONNECTION_REFUSED,
                client_request_id=client_request_id,
            ) from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise TransientError("timed out connecting to Graph", code=Code.CONNECT_TIMEOUT,
                                 client_request_id=client_request_id) from exc
        except TimeoutError as exc:
            raise AmbiguousOutcome("no answer from Graph before the timeout", code=Code.TIMEOUT,
                                   client_request_id=client_request_id) from exc
        except aiohttp.ClientError as exc:
            raise AmbiguousOutcome(f"connection to Graph broke: {type(exc).__name__}",
                                   code=Code.CONNECTION_RESET, client_request_id=client_request_id) from exc


def mailbox_url(graph_base: str, mailbox: str) -> str:
    """{graph_base}/users/{mailbox}, the mailbox quoted."""
    return f"{graph_base}/users/{quote(mailbox, safe='@.+-_')}"


def _response(resp: aiohttp.ClientResponse, raw: bytes, client_request_id: str, started: float,
              sent_at: datetime | None) -> GraphResponse:
    code = message = None
    if resp.status >= 400:
        code, message = _error_fields(raw, resp.status)
    retry_after = resp.headers.get("Retry-After")
    return GraphResponse(
        status=resp.status,
        request_id=resp.headers.get("request-id"),
        client_request_id=resp.headers.get("client-request-id", client_request_id),
        code=code,
        message=message,
        retry_after_s=parse_retry_after(retry_after),
        retry_after_present=retry_after is not None,
        latency_ms=(time.perf_counter() - started) * 1000,
        sent_at=sent_at,
    )


def _error_fields(raw: bytes, status: int) -> tuple[str, str]:
    try:
        err = orjson.loads(raw)["error"]
        return str(err.get("code") or f"HTTP{status}"), str(err.get("message") or "")[:2000]
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        # Gateways answer with HTML pages; keep a short, single-line excerpt.
        text = raw[:300].decode("utf-8", "replace").replace("\r", " ").replace("\n", " ")
        return f"HTTP{status}", text
