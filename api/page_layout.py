"""The admin page's shell: head (Pico CSS and the page's own stylesheet and script, all files), navigation,
and the CSRF field every POST form carries. Static files are served from the package (api/static).

No inline script and no inline style: the Content-Security-Policy (api.security) allows neither.
"""

from __future__ import annotations

import functools
import re
from html import escape
from pathlib import Path

from aiohttp import web

from api.security import CSRF_FIELD, current_session

routes = web.RouteTableDef()
STATIC = Path(__file__).resolve().parent / "static"
# Served file → (path under api/static, content type); all public, like the login form.
_FILES = {"page.js": ("page.js", "text/javascript"), "page.css": ("page.css", "text/css"),
          "pico.min.css": ("vendor/pico.min.css", "text/css")}
_NAV = (("/ui/email-provider", "Email provider", False), ("/ui/activity", "Activity", False),
        ("/ui/webhooks", "Webhooks", True), ("/ui/keys", "API keys", True))
_POST_FORM = re.compile(r"(<form\b[^>]*\bmethod='post'[^>]*>)")


def page(title: str, body: str, *, status: int = 200) -> web.Response:
    """A whole page: its POST forms get the session's CSRF field, the nav the links the role may open."""
    session = current_session()
    if session.token:
        field = f"<input type='hidden' name='{CSRF_FIELD}' value='{escape(session.token)}'>"
        body = _POST_FORM.sub(lambda m: m.group(1) + field, body)
    html = ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{escape(title)} · tenantmail</title><link rel='stylesheet' href='/static/pico.min.css'>"
            "<link rel='stylesheet' href='/static/page.css'><script src='/static/page.js' defer></script></head>"
            f"<body><header class='container'>{_nav(title, signed_in=bool(session.token), admin=session.admin)}"
            f"</header><main class='container'><h1>{escape(title)}</h1>{body}</main></body></html>")
    return web.Response(text=html, content_type="text/html", status=status)


def _nav(title: str, *, signed_in: bool, admin: bool) -> str:
    if not signed_in:
        return "<nav aria-label='Main'><ul><li><strong>tenantmail</strong></li></ul></nav>"
    links = "".join(
        f"<li><a href='{href}'{' aria-current=page' if label == title else ''}>{label}</a></li>"
        for href, label, admin_only in _NAV if admin or not admin_only)
    return f"<nav aria-label='Main'><ul><li><strong>tenantmail</strong></li></ul><ul>{links}</ul></nav>"


def scrollable(label: str, table: str) -> str:
    """A wide table in a region that scrolls sideways, reachable by keyboard (tabindex) and named."""
    return f"<div class='table-wrap' tabindex='0' role='region' aria-label='{escape(label)}'>{table}</div>"


def when(iso: str) -> str:
    """An ISO time as `YYYY-MM-DD HH:MM:SS UTC` (the API's times are UTC), escaped."""
    return escape(f"{iso[:10]} {iso[11:19]} UTC" if len(iso) >= 19 else iso)


def _static(name: str) -> None:
    path, content_type = _FILES[name]

    async def serve(_request: web.Request) -> web.Response:
        return web.Response(text=_read(path), content_type=content_type, headers={"Cache-Control": "max-age=300"})

    serve.__doc__ = f"/static/{name} (public, cached five minutes)."
    routes.get(f"/static/{name}")(serve)


for _name in _FILES:  # the page's script, its stylesheet and the vendored Pico CSS
    _static(_name)


@functools.cache
def _read(path: str) -> str:
    return (STATIC / path).read_text(encoding="utf-8")
