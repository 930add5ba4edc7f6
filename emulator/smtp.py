"""A local SMTP relay (aiosmtpd) for the platform default provider: records every message it gets.

Runs on the emulator's event loop, on its own port, started and stopped with the emulator
(`running_emulator`, `EmulatorProcess`, `tenantmail emulator`, `tenantmail demo`). With TLS on it
offers STARTTLS with the emulator's certificate (`smtp_security="tls"` serves implicit TLS
instead); with `smtp_credentials` set it requires AUTH.

Faults, injected per test through the control API (`POST /_emulator/smtp/faults`) or
`handle.add_smtp_fault(...)`:

    {"stage": "mail" | "rcpt" | "data", "reply": "451 4.3.0 Try again later"}
        answer that command with this reply instead of accepting it;
    {"stage": "data", "kind": "drop_after_data"}
        record the message (the relay may well have queued it), then cut the connection before
        the final reply: the client cannot know whether it was accepted;
    optional "recipient" (only transactions to that address) and "count" (the next N matches;
    absent = every match). The first matching rule of a stage fires.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import itertools
import logging
import re
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from emulator.state import matches
from emulator.wire import EMULATOR_KEY

if TYPE_CHECKING:
    from emulator.server import Emulator

STAGES = ("mail", "rcpt", "data")
_REPLY = re.compile(r"^[2-5]\d\d [ -~]{0,400}$")
_HOLD_S = 3600.0


@dataclass
class SmtpFault:
    """One fault rule; see the module docstring."""

    id: str
    stage: str
    reply: str | None = None
    kind: str = "reply"
    recipient: str | None = None
    count: int | None = None
    hits: int = 0

    def public(self) -> dict[str, Any]:
        """JSON view."""
        return dict(self.__dict__)


def build_smtp_fault(fault_id: str, spec: dict[str, Any]) -> SmtpFault:
    """Validate a fault spec; raises ValueError naming the bad key."""
    unknown = set(spec) - {"stage", "reply", "kind", "recipient", "count"}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}")
    stage = spec.get("stage", "data")
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}")
    kind = spec.get("kind", "reply")
    if kind not in ("reply", "drop_after_data"):
        raise ValueError("kind must be reply or drop_after_data")
    if kind == "drop_after_data" and stage != "data":
        raise ValueError("drop_after_data needs stage data")
    reply = spec.get("reply")
    if kind == "reply" and not (isinstance(reply, str) and _REPLY.match(reply) and reply[0] in "45"):
        raise ValueError("reply must be a 4xx or 5xx reply line such as '451 4.3.0 Try again later'")
    count = spec.get("count")
    if count is not None and (not isinstance(count, int) or count < 1):
        raise ValueError("count must be a positive integer")
    recipient = spec.get("recipient")
    return SmtpFault(fault_id, stage, reply, kind, recipient.lower() if recipient else None, count)


@dataclass
class SmtpCounters:
    """Counts since the last reset."""

    connections: int = 0
    transactions: int = 0
    accepted: int = 0
    dropped_after_data: int = 0
    faults_injected: int = 0
    auth_failures: int = 0
    replies: dict[str, int] = field(default_factory=dict)


class SmtpRelay:
    """The recording relay: messages, fault rules, counters; `start()`/`stop()` on the current loop."""

    def __init__(self, emulator: Emulator) -> None:
        self._emu = emulator
        self.messages: list[dict[str, Any]] = []
        self.faults: list[SmtpFault] = []
        self.counters = SmtpCounters()
        self.port: int | None = None
        self._server: asyncio.AbstractServer | None = None
        self._protocols: set[_Server] = set()
        self._queue_ids = itertools.count(1)

    def reset(self) -> None:
        """Forget messages, faults and counters."""
        self.messages = []
        self.faults = []
        self.counters = SmtpCounters()

    async def start(self) -> None:
        """Listen on the emulator's host at `smtp_port` (0 = a free port)."""
        chatty = logging.getLogger("mail.log")  # aiosmtpd logs every command at INFO
        if chatty.level == logging.NOTSET:
            chatty.setLevel(logging.WARNING)
        config = self._emu.config
        tls = self._emu.tls.server_context() if self._emu.tls else None
        implicit = tls if config.smtp_security == "tls" else None
        starttls = tls if config.smtp_security == "starttls" else None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Server(self, starttls), config.host, config.smtp_port, ssl=implicit)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the listener and every open connection."""
        if self._server is not None:
            self._server.close()
            self.disconnect_all()
            await self._server.wait_closed()
            self._server = None

    def disconnect_all(self) -> int:
        """Close every open connection, as a relay does to idle clients; returns how many."""
        open_now = [p for p in self._protocols if p.transport is not None]
        for protocol in open_now:
            assert protocol.transport is not None
            protocol.transport.close()
        return len(open_now)

    def fault_for(self, stage: str, recipients: list[str]) -> SmtpFault | None:
        """The first rule of `stage` that matches (and is not used up); counts the hit."""
        wanted = {r.lower() for r in recipients}
        for fault in self.faults:
            if fault.stage != stage or (fault.count is not None and fault.hits >= fault.count):
                continue
            if fault.recipient and fault.recipient not in wanted:
                continue
            fault.hits += 1
            self.counters.faults_injected += 1
            return fault
        return None

    def record(self, protocol: _Server, envelope: Envelope, *, dropped: bool) -> str:
        """Keep a received message; returns its queue id."""
        raw = envelope.original_content or b""
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        queue_id = f"Q{next(self._queue_ids):08X}"
        self.messages.append({
            "queue_id": queue_id, "connection": protocol.connection_id, "tls": protocol.session_tls(),
            "auth_user": protocol.auth_user, "mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos),
            "subject": str(parsed.get("Subject", "")), "from": str(parsed.get("From", "")),
            "to": str(parsed.get("To", "")), "cc": str(parsed.get("Cc", "")),
            "reply_to": str(parsed.get("Reply-To", "")), "message_id": str(parsed.get("Message-ID", "")),
            "notification_id": str(parsed.get("X-Tenantmail-Notification-Id", "")),
            "headers": {k: str(v) for k, v in parsed.items()}, "data": raw.decode("utf-8", "replace"),
            "size_bytes": len(raw), "received_at": time.time(), "dropped": dropped,
        })
        return queue_id

    def auth_needed(self) -> bool:
        """Whether senders must AUTH first (`smtp_credentials` set)."""
        return bool(self._emu.config.smtp_credentials)

    def authenticate(self, login: bytes, password: bytes) -> bool:
        """Check AUTH credentials against `smtp_credentials`."""
        users = self._emu.config.smtp_credentials or {}
        ok = users.get(login.decode(errors="replace")) == password.decode(errors="replace")
        if not ok:
            self.counters.auth_failures += 1
        return ok

    def count_reply(self, reply: str) -> None:
        """Tally replies by code, for tests that check what the relay answered."""
        code = reply[:3]
        self.counters.replies[code] = self.counters.replies.get(code, 0) + 1


class _Handler:
    """aiosmtpd handler hooks: faults first, then accept and record."""

    def __init__(self, relay: SmtpRelay) -> None:
        self._relay = relay

    async def handle_MAIL(self, server: _Server, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        self._relay.counters.transactions += 1
        if self._relay.auth_needed() and server.auth_user is None:
            return self._reply("530 5.7.0 Authentication required")
        fault = self._relay.fault_for("mail", [])
        if fault is not None and fault.reply:
            return self._reply(fault.reply)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: _Server, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        fault = self._relay.fault_for("rcpt", [address])
        if fault is not None and fault.reply:
            return self._reply(fault.reply)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: _Server, session: Session, envelope: Envelope) -> str:
        fault = self._relay.fault_for("data", list(envelope.rcpt_tos))
        if fault is not None and fault.kind == "drop_after_data":
            self._relay.record(server, envelope, dropped=True)
            self._relay.counters.dropped_after_data += 1
            if server.transport is not None:
                server.transport.abort()
            await asyncio.sleep(_HOLD_S)  # cancelled when aiosmtpd sees the connection go
            return "451 4.3.0 unreachable"
        if fault is not None and fault.reply:
            return self._reply(fault.reply)
        queue_id = self._relay.record(server, envelope, dropped=False)
        self._relay.counters.accepted += 1
        return self._reply(f"250 2.0.0 Ok: queued as {queue_id}")

    def _reply(self, reply: str) -> str:
        self._relay.count_reply(reply)
        return reply


class _Server(SMTP):
    """aiosmtpd's protocol with a connection id and the relay's authenticator."""

    _ids = itertools.count(1)

    def __init__(self, relay: SmtpRelay, starttls: ssl.SSLContext | None) -> None:
        creds = relay._emu.config.smtp_credentials
        # AUTH is enforced in handle_MAIL rather than with auth_required, which aiosmtpd only pairs
        # with STARTTLS (it would refuse AUTH over implicit TLS, or warn over plain text).
        super().__init__(_Handler(relay), hostname="relay.emulator.test", ident="tenantmail emulator relay",
                         tls_context=starttls, auth_require_tls=starttls is not None,
                         authenticator=self._authenticator if creds else None, timeout=60)
        self._relay = relay
        self.connection_id = next(self._ids)
        self.auth_user: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None:  # not the second call after STARTTLS
            self._relay.counters.connections += 1
            self._relay._protocols.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self._relay._protocols.discard(self)
        super().connection_lost(error)

    def session_tls(self) -> bool:
        """Whether this connection is encrypted (STARTTLS or implicit TLS)."""
        transport = self.transport
        return transport is not None and transport.get_extra_info("sslcontext") is not None

    def _authenticator(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                       auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        ok = self._relay.authenticate(auth_data.login, auth_data.password)
        if ok:
            self.auth_user = auth_data.login.decode(errors="replace")
        return AuthResult(success=ok, handled=False)


def _relay(request: web.Request) -> SmtpRelay:
    relay: SmtpRelay | None = request.app[EMULATOR_KEY].smtp
    if relay is None:
        raise web.HTTPNotFound(text="the SMTP relay is off (smtp=False)")
    return relay


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body, default=str), content_type="application/json")


async def get_messages(request: web.Request) -> web.Response:
    """GET /_emulator/smtp/messages?field=value: received messages, oldest first."""
    return _json([m for m in _relay(request).messages if matches(m, dict(request.query))])


async def get_counters(request: web.Request) -> web.Response:
    """GET /_emulator/smtp/counters."""
    return _json(_relay(request).counters.__dict__)


async def add_fault(request: web.Request) -> web.Response:
    """POST /_emulator/smtp/faults: add a rule, returns it with its id."""
    relay = _relay(request)
    try:
        spec = await request.json()
        fault = build_smtp_fault(request.app[EMULATOR_KEY].ids.new(), spec if isinstance(spec, dict) else {})
    except ValueError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    relay.faults.append(fault)
    return _json(fault.public(), status=201)


async def disconnect(request: web.Request) -> web.Response:
    """POST /_emulator/smtp/disconnect: close every open client connection (idle-timeout style)."""
    return _json({"closed": _relay(request).disconnect_all()})


async def list_faults(request: web.Request) -> web.Response:
    """GET /_emulator/smtp/faults."""
    return _json([f.public() for f in _relay(request).faults])


async def clear_faults(request: web.Request) -> web.Response:
    """DELETE /_emulator/smtp/faults."""
    _relay(request).faults.clear()
    return _json({"cleared": True})


def add_routes(app: web.Application) -> None:
    """Mount the relay's part of the control API."""
    r = app.router
    r.add_get("/_emulator/smtp/messages", get_messages)
    r.add_get("/_emulator/smtp/counters", get_counters)
    r.add_post("/_emulator/smtp/faults", add_fault)
    r.add_get("/_emulator/smtp/faults", list_faults)
    r.add_delete("/_emulator/smtp/faults", clear_faults)
    r.add_post("/_emulator/smtp/disconnect", disconnect)
