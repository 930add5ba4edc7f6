"""Security headers on every answer (API, page, static files, redirects, errors) and the page's CSRF tokens."""

from __future__ import annotations

import re
import socket
from urllib.parse import urlsplit

import requests

from api.security import CSRF_FIELD
from tests.api_harness import ApiServer

WANTED = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}


def _assert_secure(response: requests.Response, what: str) -> None:
    for name, value in WANTED.items():
        assert response.headers.get(name) == value, (what, name, response.headers)
    policy = response.headers.get("Content-Security-Policy", "")
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy, (what, policy)
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy, (what, policy)
    server = response.headers.get("Server", "")
    assert "aiohttp" not in server.lower() and "python" not in server.lower(), (what, server)


def _signed_in(api: ApiServer, role: str = "admin") -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    response = session.post(api.base_url + "/ui/login", data={"key": api.key("acme", role)}, timeout=30)
    assert response.status_code == 200 and "Email provider" in response.text
    return session


def test_every_kind_of_answer_carries_the_security_headers(api: ApiServer) -> None:
    viewer = api.client("acme", "viewer")
    anonymous = api.anonymous()
    page = _signed_in(api)
    answers = {
        "json 200": viewer.get("/v1/email-provider"),
        "json 401": anonymous.get("/v1/activity"),
        "json 403": viewer.post("/v1/notifications", json={"to": ["a@example.org"]}),
        "json 422": viewer.get("/v1/activity", params={"stauts": "x"}),
        "json 400": api.client("acme").put("/v1/email-provider", data=b"{not json",
                                           headers={"Content-Type": "application/json"}),
        "json 413": api.client("acme").put("/v1/email-provider", data=b"x" * (api.settings.api_max_body_bytes + 1),
                                           headers={"Content-Type": "application/json"}),
        "404 unknown path": anonymous.get("/nowhere"),
        "405": anonymous.call("PATCH", "/healthz"),
        "openapi": anonymous.get("/v1/openapi.json"),
        "healthz": anonymous.get("/healthz"),
        "metrics": anonymous.get("/metrics"),
        "static js": anonymous.get("/static/page.js"),
        "static css": anonymous.get("/static/pico.min.css"),
        "login page": anonymous.get("/ui/login"),
        "redirect to login": anonymous.get("/ui/activity", allow_redirects=False),
        "page": page.get(api.base_url + "/ui/activity", timeout=30),
        "page 403 csrf": page.post(api.base_url + "/ui/keys", data={"role": "viewer"}, timeout=30),
    }
    assert answers["json 413"].status_code == 413 and answers["redirect to login"].status_code == 303
    assert answers["page 403 csrf"].status_code == 403 and answers["405"].status_code == 405
    for what, response in answers.items():
        _assert_secure(response, what)


def test_a_request_aiohttp_refuses_before_routing_does_not_name_aiohttp(api: ApiServer) -> None:
    # A request line over the server's limit is answered by aiohttp's protocol handler, before the app.
    host, port = urlsplit(api.base_url).hostname, urlsplit(api.base_url).port
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    assert re.match(r"HTTP/1\.[01] 400 ", head), head
    assert "aiohttp" not in head.lower() and "Server: tenantmail" in head, head


def test_page_forms_carry_a_token_and_posts_without_it_change_nothing(api: ApiServer) -> None:
    page = _signed_in(api)
    keys_page = page.get(api.base_url + "/ui/keys", timeout=30).text
    forms = re.findall(r"<form\b[^>]*method='post'[^>]*>(.*?)</form>", keys_page, re.S)
    assert forms and all(f"name='{CSRF_FIELD}'" in form for form in forms)
    token = re.search(rf"name='{CSRF_FIELD}' value='([^']+)'", keys_page).group(1)  # type: ignore[union-attr]
    before = api.client("acme").get("/v1/keys").json()["items"]

    # without the token, with another session's token: 403 naming the field, no key created
    missing = page.post(api.base_url + "/ui/keys", data={"role": "viewer", "label": "csrf-probe"}, timeout=30)
    other_token = re.search(rf"name='{CSRF_FIELD}' value='([^']+)'",  # type: ignore[union-attr]
                            _signed_in(api).get(api.base_url + "/ui/keys", timeout=30).text).group(1)
    forged = page.post(api.base_url + "/ui/keys", data={"role": "viewer", "label": "csrf-probe",
                                                        CSRF_FIELD: other_token}, timeout=30)
    for refused in (missing, forged):
        assert refused.status_code == 403 and refused.json()["error"]["field"] == CSRF_FIELD
    assert other_token != token
    after_refusals = api.client("acme").get("/v1/keys").json()["items"]
    assert not [k for k in after_refusals if k["label"] == "csrf-probe"]

    # with the page's own token: created
    accepted = page.post(api.base_url + "/ui/keys", data={"role": "viewer", "label": "csrf-probe",
                                                          CSRF_FIELD: token}, timeout=30)
    assert accepted.status_code == 200 and "id='shown-once'" in accepted.text
    created = [k for k in api.client("acme").get("/v1/keys").json()["items"] if k["label"] == "csrf-probe"]
    assert len(created) == 1 and not [k for k in before if k["label"] == "csrf-probe"]


def test_pages_have_no_inline_script_or_style(api: ApiServer) -> None:
    page = _signed_in(api)
    for path in ("/ui/email-provider", "/ui/email-provider?edit=1", "/ui/activity", "/ui/webhooks", "/ui/keys"):
        html = page.get(api.base_url + path, timeout=30).text
        assert "<style" not in html and " style=" not in html, path
        assert all("src=" in tag for tag in re.findall(r"<script\b[^>]*>", html)), path
        assert "/static/pico.min.css" in html and "http://" not in html.replace(api.base_url, ""), path
