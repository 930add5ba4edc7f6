"""Secret hygiene: with a known client secret, a certificate's private key and the SMTP relay's
password configured and traffic sent, no secret, access token or API key appears in a PostgreSQL
dump, a Redis dump (every value and an uncompressed RDB file), the Celery messages, any log line of
the API, worker and dispatcher processes, or any API response body; in plain, hex, URL-encoded,
JSON-escaped or base64 form. A canary planted in each source proves the scan of that source finds
what is there.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
import redis
import requests

from api.keys import create_key
from emulator.demo import PLATFORM_NO_REPLY, make_tenant, tenant_id_for
from emulator.testing import make_certificate
from shared.models import Notification
from tenantmail.embedded import free_port
from tests.secret_scan import celery_messages, redis_dump, scan
from tests.stack import FAST, ROOT, Stack, new_encryption_key, wait_until
from worker.celery_app import QUEUE, create_celery, publisher

_N = Notification.__table__  # type: ignore[attr-defined]
TENANT = "hygiene"
INDEX = 7  # emulator tenant7.example
ROTATED = 8  # tenant8.example: its saved secret is replaced in the directory before it sends
CERT = 9  # tenant9.example: its app signs in with a certificate
RELAY_USER = "relay-user"


@pytest.fixture
def fresh_pg(pg_database: str) -> str:
    """The session's PostgreSQL database, emptied: it is dumped whole."""
    with psycopg.connect(pg_database, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                                             "AND tablename <> 'alembic_version'")]
        conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables))
    return pg_database


class TokenRecorder:
    """Keeps every access token the in-process emulator signs (the emulator's own view of what it issued)."""

    def __init__(self, emulator: Any) -> None:
        self._service = emulator.emulator.tokens
        self._mint = self._service.mint
        self.tokens: list[str] = []

        def mint(claims: dict[str, Any]) -> str:
            token: str = self._mint(claims)
            self.tokens.append(token)
            return token

        self._service.mint = mint

    def close(self) -> None:
        self._service.mint = self._mint


def _process(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "tenantmail", *cmd], env=env, cwd=ROOT,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


class Api:
    """HTTP calls to the API process; keeps every response body."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.session = requests.Session()
        self.session.trust_env = False
        self.bodies: list[bytes] = []

    def call(self, method: str, path: str, key: str | None = None, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = self.session.request(method, self.base_url + path, headers=headers, timeout=60,
                                        allow_redirects=False, **kwargs)
        self.bodies.append(response.content)
        return response


def _secret_form(secret: str, index: int = INDEX) -> dict[str, Any]:
    return {"provider": "customer", "service": "microsoft_graph", "sender_name": "Hygiene",
            "sender_address": f"sender0@tenant{index}.example", "azure_tenant": tenant_id_for(index),
            "client_id": make_tenant(index)["apps"][0]["client_id"], "client_secret": secret, "cloud": "global"}


def _traffic(api: Api, admin: str, sender: str, secret: str, wrong_secret: str, canary: str) -> list[str]:
    """Save a wrong then the right secret, send a test, enqueue notifications (one carrying the canary)."""
    assert api.call("PUT", "/v1/email-provider", admin, json=_secret_form(wrong_secret)).status_code == 422
    saved = api.call("PUT", "/v1/email-provider", admin, json=_secret_form(secret))
    assert saved.status_code == 200, saved.text
    test = api.call("POST", "/v1/email-provider/test", admin, json={"to": "ana@example.org"})
    assert test.json()["result"] == "sent", test.text
    msg = {"to": ["ana@example.org"], "subject": "Review due", "body": "<p>Hi</p>", "body_type": "html"}
    ids = [api.call("POST", "/v1/notifications", sender, json=msg).json()["id"] for _ in range(4)]
    ids += api.call("POST", "/v1/notifications:batch", sender, json={"items": [msg] * 3}).json()["ids"]
    ids.append(api.call("POST", "/v1/notifications", sender, json={**msg, "subject": f"canary {canary}"}).json()["id"])
    return ids


def _rotated_tenant(api: Api, emulator: Any, stack: Stack, admin: str, sender: str, secret: str) -> list[str]:
    """A tenant saves a valid secret that the directory then replaces: the worker's token request fails
    (AADSTS7000215), and that error path (the tenant's queue held for its admin) logs and records what it does."""
    assert api.call("PUT", "/v1/email-provider", admin, json=_secret_form(secret, ROTATED)).status_code == 200
    emulator.add_tenant(make_tenant(ROTATED, secret=f"rotated-{uuid.uuid4().hex}"))
    msg = {"to": ["cy@example.org"], "subject": "Rotated", "body": "Hi"}
    nid = api.call("POST", "/v1/notifications", sender, json=msg).json()["id"]
    assert stack.wait_terminal([nid], timeout_s=60, settled=("held",)) == {nid: "held"}
    return [nid]


def _certificate_and_platform_tenants(api: Api, emulator: Any, stack: Stack, keys: dict[str, str],
                                      key_pem: str, cert_pem: str) -> list[str]:
    """A tenant whose app signs in with a certificate, and one on the platform default (the SMTP relay,
    which asks for a login): each sends one notification."""
    tenant = make_tenant(CERT)
    emulator.add_tenant(tenant)
    emulator.add_certificate(tenant_id_for(CERT), tenant["apps"][0]["client_id"], cert_pem)
    form = {k: v for k, v in _secret_form("", CERT).items() if k != "client_secret"}
    form["certificate_pem"] = key_pem + cert_pem
    saved = api.call("PUT", "/v1/email-provider", keys["cert admin"], json=form)
    assert saved.status_code == 200, saved.text
    msg = {"to": ["di@example.org"], "subject": "Signed", "body": "Hi"}
    ids = [api.call("POST", "/v1/notifications", keys[f"{who} sender"], json=msg).json()["id"]
           for who in ("cert", "platform")]
    assert set(stack.wait_terminal(ids, timeout_s=60).values()) == {"sent"}
    assert emulator.smtp_counters()["auth_failures"] == 0
    return ids


def _read_everything(api: Api, admin: str, viewer: str, ids: list[str]) -> None:
    for path in ("/v1/email-provider", "/v1/email-provider/history", "/v1/activity?limit=200", "/v1/events",
                 "/v1/stats", "/v1/openapi.json", "/healthz", "/readyz", "/ui/login", *[f"/v1/notifications/{i}"
                                                                                     for i in ids]):
        assert api.call("GET", path, viewer).status_code == 200, path
    assert api.call("GET", "/v1/email-provider", "tm_aaaaaaaaaaaa_" + "x" * 40).status_code == 401
    login = api.call("POST", "/ui/login", data={"key": admin})
    assert login.status_code == 303
    for path in ("/ui/email-provider", "/ui/activity"):
        assert api.call("GET", path, cookies=login.cookies).status_code == 200


def _capture_broker(r: redis.Redis, stack: Stack, ids: list[str], canary: str) -> list[bytes]:
    """Publish a batch whose id is the canary, wait until it and every notification are in the
    broker queue, and copy the queue before any worker runs."""
    publisher(create_celery(stack.settings))([canary])

    def published() -> list[bytes] | None:
        raw = r.lrange(QUEUE, 0, -1)
        decoded = celery_messages(raw)
        return raw if all(i.encode() in decoded for i in [*ids, canary]) else None

    return wait_until(published, timeout_s=30, what="every notification published to the broker")  # type: ignore[no-any-return]


def _pg_dump(url: str) -> bytes:
    binary = shutil.which("pg_dump")
    assert binary, "pg_dump is needed (postgresql-client)"
    return subprocess.run([binary, "--no-owner", url], capture_output=True, check=True, timeout=60).stdout


def _rdb_file(r: redis.Redis) -> bytes:
    """BGSAVE with compression off, so values are in the file as they are in memory."""
    r.config_set("rdbcompression", "no")
    before = r.lastsave()
    r.bgsave()
    wait_until(lambda: r.lastsave() != before, timeout_s=30, what="BGSAVE")
    folder, name = r.config_get("dir")["dir"], r.config_get("dbfilename")["dbfilename"]
    return (Path(folder) / name).read_bytes()


@pytest.mark.timeout(240)
def test_no_secret_token_or_key_in_dumps_messages_logs_or_responses(
        fresh_pg: str, redis_url: str, emulator: Any, tmp_path: Path) -> None:
    # given: a tenant whose app secret is known, and a stack of real processes logging at DEBUG
    secret, wrong_secret = f"Hyg~{uuid.uuid4().hex}+/=.Val", f"Wrong~{uuid.uuid4().hex}+/="
    canary = f"canary{uuid.uuid4().hex}"
    rotated_secret = f"Rot~{uuid.uuid4().hex}+/="
    smtp_password = f"Smtp~{uuid.uuid4().hex}+/="
    key_pem, cert_pem = make_certificate("hygiene")
    emulator.set_config(smtp_credentials={RELAY_USER: smtp_password})
    emulator.add_tenant(make_tenant(INDEX, secret=secret))
    emulator.add_tenant(make_tenant(ROTATED, secret=rotated_secret))
    recorder = TokenRecorder(emulator)
    encryption_keys = new_encryption_key()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTMAIL_")}
    env.update(FAST)
    env.update({"DATABASE_URL": fresh_pg, "REDIS_URL": redis_url, "TENANTMAIL_ENCRYPTION_KEYS": encryption_keys,
                "TENANTMAIL_AUTHORITY_OVERRIDE": emulator.base_url, "TENANTMAIL_GRAPH_BASE_OVERRIDE":
                emulator.graph_base_url, "TENANTMAIL_CA_BUNDLE": str(emulator.ca_path),
                **emulator.smtp_settings(), "TENANTMAIL_SMTP_USERNAME": RELAY_USER,
                "TENANTMAIL_SMTP_PASSWORD": smtp_password, "TENANTMAIL_PLATFORM_SENDER": PLATFORM_NO_REPLY,
                "TENANTMAIL_STATE_DIR": str(tmp_path / "state"), "TENANTMAIL_LOG_LEVEL": "DEBUG",
                "PYTHONPATH": str(ROOT)})
    stack = Stack(env, tmp_path)
    r = redis.Redis.from_url(redis_url)
    stack.procs += [_process(["api", "--port", str(port)], env, tmp_path / "api.log"),
                    _process(["dispatcher"], env, tmp_path / "dispatcher.log")]  # stopped with the workers
    api = Api(f"http://127.0.0.1:{port}")
    keys = {role: create_key(stack.engine, TENANT, role) for role in ("admin", "sender", "viewer")}
    keys.update({f"rotated {role}": create_key(stack.engine, "rotated", role) for role in ("admin", "sender")})
    keys.update({f"cert {role}": create_key(stack.engine, "certified", role) for role in ("admin", "sender")})
    keys["platform sender"] = create_key(stack.engine, "platformed", "sender")
    try:
        wait_until(lambda: _up(api), timeout_s=60, what="the API process")

        # when: settings saved, a test sent, notifications queued, captured off the broker, then delivered
        ids = _traffic(api, keys["admin"], keys["sender"], secret, wrong_secret, canary)
        broker = _capture_broker(r, stack, ids, canary)
        emulator.add_fault(route="sendMail", kind="503", count=2)  # two retries, logged with Graph's request ids
        stack.start_workers(1, concurrency=4, dispatcher=False)
        assert set(stack.wait_terminal(ids, timeout_s=60).values()) == {"sent"}
        _certificate_and_platform_tenants(api, emulator, stack, keys, key_pem, cert_pem)
        emulator.advance_clock(4000)  # tokens expire as Graph sees them: a 401 and a fresh token
        ids += _traffic_after_expiry(api, keys["sender"], stack)
        _rotated_tenant(api, emulator, stack, keys["rotated admin"], keys["rotated sender"], rotated_secret)
        _read_everything(api, keys["admin"], keys["viewer"], ids)
    finally:
        recorder.close()
        stack.stop()

    # then: the scan of every source finds the canary planted there and nothing else
    r.set("tm:hygiene:canary", b"prefix-" + base64.b64encode(b"x" + canary.encode()))  # base64, off alignment
    plants = {"api.log": quote(canary), "dispatcher.log": canary.encode().hex(),
              "worker0.log": base64.urlsafe_b64encode(b"xy" + canary.encode()).decode()}  # one form each
    for name, planted in plants.items():
        with (tmp_path / name).open("a") as fh:
            fh.write(f"planted {planted}\n")
    sources = {
        "postgres dump": _pg_dump(fresh_pg),  # the canary is in a notification's subject
        "redis values": redis_dump(r), "redis rdb": _rdb_file(r),
        "celery messages": celery_messages(broker),  # the canary batch's id, raw (base64) and decoded
        "api log": (tmp_path / "api.log").read_bytes(), "dispatcher log": (tmp_path / "dispatcher.log").read_bytes(),
        "worker log": stack.logs().encode(), "api responses": b"\n".join(api.bodies),  # GET of the canary's row
    }
    assert len(set(recorder.tokens)) >= 3, "the API's credential check, the worker and its refresh after a 401"
    found_canary = {h.source for h in scan(sources, {"canary": canary})}
    assert found_canary == set(sources), f"the scan misses the canary in {set(sources) - found_canary}"
    secrets = {"client secret": secret, "wrong client secret": wrong_secret, "rotated client secret": rotated_secret,
               "encryption key": encryption_keys, "SMTP relay password": smtp_password,
               "certificate private key": key_pem, "certificate private key, first line": key_pem.splitlines()[1],
               **{f"{role} API key": key for role, key in keys.items()},
               **{f"{role} API key secret part": key.split("_", 2)[2] for role, key in keys.items()},
               **{f"access token {i}": t for i, t in enumerate(sorted(set(recorder.tokens)))}}
    hits = scan(sources, secrets)
    assert hits == [], "\n".join(f"{h.source}: {h.secret} ({h.form}) in …{h.context}…" for h in hits)


def _up(api: Api) -> bool:
    try:
        return api.session.get(api.base_url + "/healthz", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def _traffic_after_expiry(api: Api, sender: str, stack: Stack) -> list[str]:
    msg = {"to": ["bo@example.org"], "subject": "After expiry", "body": "Hi"}
    ids = [api.call("POST", "/v1/notifications", sender, json=msg).json()["id"] for _ in range(3)]
    assert set(stack.wait_terminal(ids, timeout_s=60).values()) == {"sent"}
    return ids
