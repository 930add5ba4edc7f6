"""Security headers on every response, and the CSRF token of the admin page's forms.

`headers` is the outermost middleware, so the JSON API, the page, redirects and every error (the
error middleware's answers, a 404 from the router, the 303 to the login) carry the same headers. The
policy allows no inline script and no inline style: the page's script and styles are files under
/static. `Server` names the product only, never aiohttp's version.

The page authenticates with the API key in an HttpOnly, SameSite=Strict cookie. SameSite keeps other
sites' posts from carrying it in current browsers; the CSRF token is the second lock, for browsers
and proxies that do not honour it. The token is an HMAC of the cookie's key, so it needs no server
state, changes with the key, and reveals nothing of it; every page form posts it as `csrf`.
"""

from __future__ import annotations

import base64
import contextvars
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web, web_response

from api.context import PRINCIPAL_KEY
from api.errors import ApiError
from api.middleware import COOKIE

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CSRF_FIELD = "csrf"
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Server": "tenantmail",
}


@dataclass(frozen=True, slots=True)
class PageSession:
    """What the page shell needs of the signed-in caller: the CSRF token, and whether to link admin pages."""

    token: str = ""
    admin: bool = False


# The session of the page being rendered, for api.page_layout (each request runs in its own task).
_session: contextvars.ContextVar[PageSession | None] = contextvars.ContextVar("tenantmail_page", default=None)
_SIGNED_OUT = PageSession()
_LOGIN = "/ui/login"


@web.middleware
async def headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Add the security headers to the answer, whether returned or raised (redirects, HTTP errors)."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(SECURITY_HEADERS)
        raise
    if not response.prepared:  # a streamed answer (CSV) sets them itself before it starts
        response.headers.update(SECURITY_HEADERS)
    return response


def hide_server_version() -> None:
    """Make aiohttp's own answers (a request it refuses before any app sees it, e.g. a request line over the
    limit) say `Server: tenantmail` too. aiohttp offers no setting: its default lives in this module global,
    read when each answer is prepared; tests/test_api_security.py fails if that ever stops working."""
    web_response.SERVER_SOFTWARE = SECURITY_HEADERS["Server"]  # type: ignore[attr-defined]


def csrf_token(key: str) -> str:
    """The CSRF token of the page forms of a session signed in with `key`."""
    digest = hmac.new(key.encode(), b"tenantmail page csrf v1", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def current_session() -> PageSession:
    """The session of the page this request renders (empty outside a signed-in page)."""
    return _session.get() or _SIGNED_OUT


@web.middleware
async def csrf(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Check `csrf` on every POST to /ui but the login against the key in the page's cookie (403 naming
    `csrf` otherwise), and give the page shell the session's token. Runs after `auth`: the key is valid."""
    key = request.cookies.get(COOKIE, "")
    if not request.path.startswith("/ui") or request.path == _LOGIN or not key:
        return await handler(request)
    expected = csrf_token(key)
    if request.method == "POST":
        sent = (await request.post()).get(CSRF_FIELD)
        if not isinstance(sent, str) or not hmac.compare_digest(sent, expected):
            raise ApiError(403, "csrf_failed", "the form's CSRF token is missing or wrong: reload the page "
                                               "and submit it again", field=CSRF_FIELD)
    who = request.get(PRINCIPAL_KEY)
    reset = _session.set(PageSession(expected, admin=who is not None and who.may("admin")))
    try:
        return await handler(request)
    finally:
        _session.reset(reset)
