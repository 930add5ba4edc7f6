"""The platform default's SMTP relay: a bounded pool of reused aiosmtplib connections per process.

This is the boundary where aiosmtplib's exceptions and the relay's replies become our errors:

    connect, TLS, EHLO failure, or the connection lost before DATA -> TransientError (nothing sent)
    4xx reply (MAIL, RCPT, DATA)                                   -> TransientError SMTP4xx (retry, backoff)
    5xx reply, AUTH refused                                         -> PermanentError SMTP5xx (failed)
    connection lost or timed out once DATA began                    -> AmbiguousOutcome (may be delivered,
                                                                       like a Graph 504)

Every error carries the relay's reply code in `status` and `code` (`SMTP451`) and its text in the
message. A pooled connection the relay closed while idle is noticed at MAIL (nothing sent yet)
and replaced once by a fresh one. At most `smtp_pool_size` transactions run at a time; the rest
wait for a connection.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field

import aiosmtplib

from shared.codes import Code
from shared.errors import AmbiguousOutcome, DeliveryError, PermanentError, TransientError
from shared.mime import Envelope
from shared.settings import Settings

_LOST = (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError)


@dataclass(frozen=True, slots=True)
class SmtpResult:
    """The relay accepted the message: its final reply, and recipients it refused while accepting others."""

    code: int
    message: str
    message_id: str
    latency_ms: float
    refused: dict[str, str] = field(default_factory=dict)


class _Stale(Exception):
    """A pooled connection turned out closed before anything was sent."""


def reply_error(code: int, message: str) -> DeliveryError:
    """The error a non-2xx SMTP reply means: 4xx transient, 5xx permanent."""
    text = f"{code} {message}".strip()[:2000]
    cls = TransientError if 400 <= code < 500 else PermanentError
    return cls(text, status=code, code=f"SMTP{code}")


class SmtpRelayClient:
    """Sends envelopes through the relay in settings over at most `pool_size` reused connections."""

    def __init__(self, settings: Settings, *, pool_size: int | None = None) -> None:
        if not settings.smtp_host:
            raise ValueError("TENANTMAIL_SMTP_HOST is not set")
        self._s = settings
        self._slots = asyncio.Semaphore(pool_size or settings.smtp_pool_size)
        self._idle: list[aiosmtplib.SMTP] = []
        self._tls = ssl.create_default_context(cafile=settings.ca_bundle) if settings.ca_bundle else None
        self.connections_opened = 0

    async def send(self, envelope: Envelope) -> SmtpResult:
        """One SMTP transaction; raises TransientError, PermanentError or AmbiguousOutcome."""
        async with self._slots:
            started = time.perf_counter()
            if self._idle:
                try:
                    return await self._guarded(self._idle.pop(), envelope, started, reused=True)
                except _Stale:
                    pass  # the relay closed it while idle; nothing was sent
            return await self._guarded(await self._connect(), envelope, started, reused=False)

    async def check(self) -> None:
        """Connect (TLS and AUTH as configured) and QUIT: raises what a send would for a bad relay."""
        conn = await self._connect()
        try:
            await conn.quit()
        except (*_LOST, aiosmtplib.SMTPException):
            conn.close()

    async def close(self) -> None:
        """QUIT every idle connection."""
        idle, self._idle = self._idle, []
        for conn in idle:
            try:
                await asyncio.wait_for(conn.quit(), 5)
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                conn.close()

    async def _connect(self) -> aiosmtplib.SMTP:
        s = self._s
        conn = aiosmtplib.SMTP(
            hostname=s.smtp_host, port=s.smtp_port, use_tls=s.smtp_security == "tls",
            start_tls=s.smtp_security == "starttls", tls_context=self._tls, timeout=s.smtp_timeout_s,
            username=s.smtp_username, password=s.smtp_password.get_secret_value() if s.smtp_password else None,
        )
        try:
            await conn.connect()
        except aiosmtplib.SMTPResponseException as exc:  # greeting, STARTTLS or AUTH refused
            conn.close()
            raise reply_error(exc.code, exc.message) from exc
        except aiosmtplib.SMTPNotSupported as exc:
            conn.close()
            raise PermanentError(f"the SMTP relay does not support {exc}", code=Code.SMTP_NOT_SUPPORTED) from exc
        except ssl.SSLError as exc:
            conn.close()
            raise TransientError(f"TLS with the SMTP relay failed: {exc}", code=Code.TLS_ERROR) from exc
        except (*_LOST, aiosmtplib.SMTPException) as exc:
            conn.close()
            raise TransientError(f"cannot connect to the SMTP relay {s.smtp_host}:{s.smtp_port}: "
                                 f"{type(exc).__name__}", code=Code.CONNECTION_REFUSED) from exc
        self.connections_opened += 1
        return conn

    async def _guarded(self, conn: aiosmtplib.SMTP, env: Envelope, started: float, *, reused: bool) -> SmtpResult:
        # A caller's timeout cancels mid-transaction: that connection's state is unknown, so it goes.
        try:
            return await self._transaction(conn, env, started, reused=reused)
        except asyncio.CancelledError:
            conn.close()
            raise

    async def _transaction(self, conn: aiosmtplib.SMTP, env: Envelope, started: float, *,
                           reused: bool) -> SmtpResult:
        try:
            await conn.mail(env.mail_from)
        except aiosmtplib.SMTPResponseException as exc:
            await self._recycle(conn, exc.code)
            raise reply_error(exc.code, exc.message) from exc
        except _LOST as exc:
            conn.close()
            if reused:
                raise _Stale() from exc
            raise TransientError("the SMTP relay closed the connection before the message was sent",
                                 code=Code.CONNECTION_RESET) from exc
        refused = await self._recipients(conn, env)
        if len(refused) == len(env.recipients):
            code, message = _first_temporary(refused)
            await self._recycle(conn, code)
            raise reply_error(code, message)
        try:
            reply = await conn.data(env.data)
        except aiosmtplib.SMTPResponseException as exc:
            await self._recycle(conn, exc.code)
            raise reply_error(exc.code, exc.message) from exc
        except _LOST as exc:
            conn.close()
            raise AmbiguousOutcome(f"the SMTP connection broke after DATA began: {type(exc).__name__}",
                                   code=Code.CONNECTION_RESET, client_request_id=env.message_id) from exc
        self._idle.append(conn)
        return SmtpResult(reply.code, reply.message, env.message_id, (time.perf_counter() - started) * 1000,
                          {r: f"{c} {m}" for r, (c, m) in refused.items()})

    async def _recipients(self, conn: aiosmtplib.SMTP, env: Envelope) -> dict[str, tuple[int, str]]:
        refused: dict[str, tuple[int, str]] = {}
        for rcpt in env.recipients:
            try:
                await conn.rcpt(rcpt)
            except aiosmtplib.SMTPResponseException as exc:
                refused[rcpt] = (exc.code, exc.message)
            except _LOST as exc:
                conn.close()
                raise TransientError("the SMTP relay closed the connection before the message was sent",
                                     code=Code.CONNECTION_RESET) from exc
        return refused

    async def _recycle(self, conn: aiosmtplib.SMTP, code: int) -> None:
        # After a refusal the connection is fine unless the relay said it is closing (421).
        if code == 421:
            conn.close()
            return
        try:
            await conn.rset()
        except (*_LOST, aiosmtplib.SMTPException):
            conn.close()
            return
        self._idle.append(conn)


def _first_temporary(refused: dict[str, tuple[int, str]]) -> tuple[int, str]:
    # Every recipient refused: if any refusal is temporary, a retry may deliver it.
    replies = list(refused.values())
    return next((r for r in replies if 400 <= r[0] < 500), replies[0])
