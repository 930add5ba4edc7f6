"""Fixtures: a private redis-server, SQLite and PostgreSQL databases, the emulator, stacks."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from sqlalchemy import text

from emulator.demo import PLATFORM_NO_REPLY
from shared.db import make_engine, migrate
from shared.secretbox import SecretBox
from shared.settings import Settings
from tenantmail.embedded import start_redis
from tests.api_harness import ApiServer
from tests.dns_server import BROKEN_ZONE, GOOD_ZONE, DnsServer
from tests.stack import FAST, Stack, new_encryption_key

pytest_plugins = ["emulator.pytest_plugin"]

RELAY_SPF_INCLUDE = "spf.relay.example"  # what the test zone's platform.example includes
PG_ADMIN_URL = os.environ.get("TENANTMAIL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI") == "true"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests build their settings explicitly; nothing leaks in from the shell."""
    for key in list(os.environ):
        if key.startswith("TENANTMAIL_") or key in ("DATABASE_URL", "REDIS_URL", "BROKER_URL"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server for the whole session (FLUSHALL cannot touch anything else)."""
    url, proc = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def dns_server() -> Iterator[DnsServer]:
    """The session's authoritative DNS server on loopback (good and broken zones, SERVFAIL and timeout
    names): every test's resolver, so no check ever queries the internet."""
    server = DnsServer(GOOD_ZONE + BROKEN_ZONE).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's Redis, emptied for this test."""
    redis.Redis.from_url(redis_server).flushall()
    return redis_server


def _pg_available() -> bool:
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for the session, migrated; skips locally without PostgreSQL."""
    if not _pg_available():
        if IN_CI:
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} (CI must provide it)")
        pytest.skip("PostgreSQL not available")
    name = f"tm_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    migrate(Settings(database_url=url))
    yield url
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database: SQLite in tmp_path, or the session's PostgreSQL truncated."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'tm.db'}"
        migrate(Settings(database_url=url))
        return url
    url: str = request.getfixturevalue("pg_database")
    engine = make_engine(Settings(database_url=url))
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE notification, delivery_attempt, provider_config, api_key, provider_history, "
                          "activity_event, expiry_reminder, webhook_endpoint, webhook_event, webhook_delivery, "
                          "webhook_attempt, notification_recipient, notification_attachment"))
    engine.dispose()
    return url


@pytest.fixture
def make_stack(database_url: str, redis_url: str, emulator: Any, tmp_path: Path,
               dns_server: DnsServer) -> Iterator[Callable[..., Stack]]:
    """Factory of a Stack wired to this test's database, Redis and emulator; stops its workers."""
    stacks: list[Stack] = []

    def factory(**env_overrides: str) -> Stack:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTMAIL_")}
        env.update(FAST)
        env.update({
            "DATABASE_URL": database_url, "REDIS_URL": redis_url,
            "TENANTMAIL_ENCRYPTION_KEYS": new_encryption_key(),
            "TENANTMAIL_AUTHORITY_OVERRIDE": emulator.base_url,
            "TENANTMAIL_GRAPH_BASE_OVERRIDE": emulator.graph_base_url,
            "TENANTMAIL_CA_BUNDLE": str(emulator.ca_path),
            **emulator.smtp_settings(),  # the platform default sends through the emulator's SMTP relay
            "TENANTMAIL_PLATFORM_SENDER": PLATFORM_NO_REPLY,
            "TENANTMAIL_DNS_RESOLVER": dns_server.address, "TENANTMAIL_PLATFORM_SPF_INCLUDE": RELAY_SPF_INCLUDE,
            "TENANTMAIL_STATE_DIR": str(tmp_path / "state"),
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        })
        env.update(env_overrides)
        log_dir = tmp_path / f"stack{len(stacks)}"
        log_dir.mkdir()
        stack = Stack(env, log_dir)
        stacks.append(stack)
        return stack

    yield factory
    for s in stacks:
        s.stop()


@pytest.fixture
def api_settings(database_url: str, redis_url: str, emulator: Any, tmp_path: Path,
                 dns_server: DnsServer) -> Settings:
    """Settings of an API wired to this test's database, Redis, emulator and the emulator's SMTP relay."""
    return Settings(database_url=database_url, redis_url=redis_url, encryption_keys=new_encryption_key(),
                    authority_override=emulator.base_url, graph_base_override=emulator.graph_base_url,
                    ca_bundle=str(emulator.ca_path), state_dir=tmp_path / "state", token_timeout_s=10.0,
                    smtp_host=emulator.smtp_host, smtp_port=emulator.smtp_port,
                    smtp_security=emulator.smtp_security, platform_sender=PLATFORM_NO_REPLY,
                    dns_resolver=dns_server.address, platform_spf_include=RELAY_SPF_INCLUDE)


@pytest.fixture
def make_api() -> Iterator[Callable[[Settings], ApiServer]]:
    """Factory of API servers on real ports for given settings; stops them afterwards."""
    servers: list[ApiServer] = []

    def factory(settings: Settings) -> ApiServer:
        engine = make_engine(settings)
        server = ApiServer(settings, engine, SecretBox.from_settings(settings)).start()
        servers.append(server)
        return server

    yield factory
    for s in servers:
        s.stop()
        s.engine.dispose()


@pytest.fixture
def api(make_api: Callable[[Settings], ApiServer], api_settings: Settings) -> ApiServer:
    """One API server for this test's database, Redis and emulator."""
    return make_api(api_settings)
