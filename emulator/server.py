"""The emulator: one aiohttp application answering Entra, Graph and the control API."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from aiohttp import web

from emulator import applications, control, drafts, entra, graph, smtp
from emulator.clock import Clock, Ids
from emulator.config import EmulatorConfig
from emulator.directory import Directory
from emulator.faults import Faults
from emulator.limits import Limits
from emulator.state import Inspection, mask_form, mask_headers
from emulator.tls import TlsMaterial
from emulator.tokens import TokenService
from emulator.wire import EMULATOR_KEY, NOTE_KEY

_CLIENT_MAX_SIZE = 64 * 1024 * 1024  # read past 4 MB so we can answer 413 ourselves (and take upload chunks)


class Emulator:
    """State plus the aiohttp app; `start()`/`stop()` run it on the current event loop."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.clock = Clock()
        self.ids = Ids(config.seed)
        self.directory = Directory(config.directory)
        self.tokens = TokenService()
        self.limits = Limits(lambda: self.config, self.clock.now)
        self.faults = Faults(self.ids.random)
        self.inspection = Inspection(config.request_log_size)
        self.mail = drafts.MailItems()  # drafts, Sent Items copies and upload sessions
        self.tls = TlsMaterial(config.state_dir, config.ca_path, config.tls_hostnames) if config.tls else None
        self.smtp = smtp.SmtpRelay(self) if config.smtp else None
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        # handler -> accept time, kept until the connection's first request
        self._accepted_at: dict[Any, float] = {}
        # handler -> when the first bytes of its current request arrived, until that request is answered
        self._arrived_at: dict[Any, float] = {}

    @property
    def base_url(self) -> str:
        """https://127.0.0.1:PORT (http:// without TLS)."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.config.host}:{self.port}"

    def ready_info(self) -> dict[str, Any]:
        """The JSON the CLI prints once listening."""
        return {
            "event": "emulator.ready",
            "base_url": self.base_url,
            "graph_base_url": f"{self.base_url}/v1.0",
            "ca_path": self.tls.ca_path if self.tls else None,
            "port": self.port,
            "smtp_host": self.config.host if self.smtp else None,
            "smtp_port": self.smtp.port if self.smtp else None,
            "smtp_security": self._smtp_security() if self.smtp else None,
        }

    def _smtp_security(self) -> str:
        # What a client should use: STARTTLS or implicit TLS need the emulator's certificate.
        return self.config.smtp_security if self.tls else "none"

    def sent_at(self, request: web.Request) -> float:
        """When the client started sending this request, as near as the server can tell.

        For the first request on a connection that is when the connection was accepted: the
        client committed to the request before connecting, and the TLS handshakes of concurrent
        new connections are served one after another by this loop, so under load a request can be
        parsed many milliseconds after its client sent it. For later requests on the connection
        it is when their first bytes were read from the socket: on a busy loop the handler can start
        long after that (behind other handlers), and a request is not later than its bytes.
        """
        accepted = self._accepted_at.pop(request.protocol, None)
        if accepted is not None:
            return accepted
        arrived = self._arrived_at.get(request.protocol)
        return arrived if arrived is not None else self.clock.now()

    def answered(self, request: web.Request) -> None:
        """The request's handler is done: bytes that arrive from now on belong to the connection's next
        request (a client sends it only after reading this answer)."""
        self._arrived_at.pop(request.protocol, None)

    def reset(self) -> None:
        """Clear outbox, log, counters, faults, throttle state, clock offset and the SMTP relay's messages,
        faults and counters; keep the directory."""
        self.faults.clear()
        self.limits.reset()
        if self.smtp is not None:
            self.smtp.reset()
        self.inspection.reset(self.config.request_log_size)
        self.mail = drafts.MailItems()
        self.clock.reset()
        self.ids.reset()

    def build_app(self) -> web.Application:
        """The aiohttp application (routes are host-agnostic)."""
        app = web.Application(client_max_size=_CLIENT_MAX_SIZE, middlewares=[_request_log])
        app[EMULATOR_KEY] = self
        control.add_routes(app)
        smtp.add_routes(app)
        drafts.add_routes(app)
        r = app.router
        r.add_get("/common/discovery/instance", entra.instance_discovery)
        r.add_get("/{tenant}/v2.0/.well-known/openid-configuration", entra.openid_configuration)
        r.add_get("/{tenant}/.well-known/openid-configuration", entra.openid_configuration)
        r.add_get("/{tenant}/discovery/v2.0/keys", entra.jwks)
        r.add_get("/{tenant}/discovery/keys", entra.jwks)
        r.add_post("/{tenant}/oauth2/v2.0/token", entra.token)
        r.add_post(r"/v1.0/users/{user}/{action:(microsoft\.graph\.)?[sS]end[mM]ail}", graph.send_mail)
        r.add_get("/v1.0/applications(appId='{app_id}')", applications.get_application)
        r.add_get("/v1.0/servicePrincipals(appId='{app_id}')", applications.get_service_principal)
        return app

    async def start(self) -> None:
        """Listen on config.host:config.port (0 = a free port)."""
        runner = web.AppRunner(self.build_app(), access_log=None, handle_signals=False)
        await runner.setup()
        sock = socket.socket(
            socket.AF_INET6 if ":" in self.config.host else socket.AF_INET, socket.SOCK_STREAM
        )
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.config.host, self.config.port))
        self.port = sock.getsockname()[1]
        site = _TimedSockSite(
            self._accepted_at,
            self._arrived_at,
            self.clock.now,
            runner,
            sock,
            ssl_context=self.tls.server_context() if self.tls else None,
            backlog=1024,
        )
        await site.start()
        self._runner = runner
        if self.smtp is not None:
            await self.smtp.start()

    async def stop(self) -> None:
        """Stop listening and close connections (held requests are released first)."""
        self.faults.clear()
        if self.smtp is not None:
            await self.smtp.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class _TimedSockSite(web.SockSite):
    """A SockSite that remembers when each connection was accepted (before any TLS handshake) and when
    the first bytes of each request arrived."""

    def __init__(self, accepted_at: dict[Any, float], arrived_at: dict[Any, float], now: Any, *args: Any,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tm_accepted_at = accepted_at
        self._tm_arrived_at = arrived_at
        self._tm_now = now

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None

        def protocol() -> Any:
            handler = server()  # created by asyncio at accept time, before the handshake
            if len(self._tm_accepted_at) > 10_000:  # connections that never sent a request
                self._tm_accepted_at.clear()
            if len(self._tm_arrived_at) > 10_000:  # connections closed in the middle of a request
                self._tm_arrived_at.clear()
            self._tm_accepted_at[handler] = self._tm_now()
            return _ArrivalTimer(handler, self._tm_arrived_at, self._tm_now)

        self._server = await asyncio.get_running_loop().create_server(
            protocol, sock=self._sock, ssl=self._ssl_context, backlog=self._backlog
        )


class _ArrivalTimer(asyncio.Protocol):
    """aiohttp's request handler behind a protocol that notes when each request's first bytes arrive
    (the handler has __slots__, so its data_received cannot be wrapped in place)."""

    def __init__(self, handler: Any, arrived_at: dict[Any, float], now: Any) -> None:
        self._handler, self._arrived_at, self._now = handler, arrived_at, now

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._handler not in self._arrived_at:
            self._arrived_at[self._handler] = self._now()
        self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self._handler.eof_received()  # type: ignore[no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        self._arrived_at.pop(self._handler, None)
        self._handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()


def _route_name(method: str, path: str) -> str:
    if (draft_route := drafts.route_name(method, path)) is not None:
        return draft_route
    if path.endswith("/token"):
        return "token"
    if "/users/" in path:
        return "sendMail"
    if "/applications(" in path:
        return "applications"
    if "/servicePrincipals(" in path:
        return "servicePrincipals"
    if "discovery" in path or "well-known" in path:
        return "discovery"
    return "other"


@web.middleware
async def _request_log(request: web.Request, handler: Any) -> web.StreamResponse:
    """Record every non-control request, masked, in the bounded log."""
    emu: Emulator = request.app[EMULATOR_KEY]
    if request.path.startswith("/_emulator/"):
        try:
            return await handler(request)
        finally:
            emu.answered(request)
    note: dict[str, Any] = {}
    request[NOTE_KEY] = note
    started = time.perf_counter()
    status = 0
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        emu.answered(request)
        form = note.pop("form", None)
        entry = {
            "time": emu.clock.now(),
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "route": _route_name(request.method, request.path),
            "status": "reset" if note.get("reset") else status,
            "headers": mask_headers(request.headers),
            "duration_ms": round((time.perf_counter() - started) * 1000.0, 3),
            **note,
        }
        if form is not None:
            entry["form"] = mask_form(form)
        emu.inspection.log.append(entry)
