"""The Alembic migrations build exactly the schema the models describe."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlmodel import SQLModel

from shared import models  # noqa: F401  (registers the tables)
from shared.db import alembic_config, make_engine
from shared.settings import Settings
from tests.conftest import PG_ADMIN_URL


@pytest.mark.postgres
def test_migrated_postgres_schema_matches_the_models(pg_database: str) -> None:
    engine = make_engine(Settings(database_url=pg_database))
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                    SQLModel.metadata)
    finally:
        engine.dispose()
    assert diff == []


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database, not migrated: a SQLite file, or a PostgreSQL database of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    request.getfixturevalue("pg_database")  # skips (or fails in CI) without PostgreSQL
    name = f"tm_mig_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_LEASES = [("sending", 111), ("queued", 222), ("retry_wait", None), ("sent", None)]


def test_migration_0004_splits_the_lease_by_state_and_back(empty_database_url: str) -> None:
    # given rows at 0003 with the one lease column
    settings = Settings(database_url=empty_database_url)
    config = alembic_config(settings)
    command.upgrade(config, "0003")
    engine = make_engine(settings)
    try:
        with engine.begin() as conn:
            for i, (state, lease) in enumerate(_LEASES):
                conn.execute(text(
                    "INSERT INTO notification (id, tenant_id, state, payload, created_at, updated_at, fair_rank, "
                    "next_attempt_ms, lease_until_ms, attempts, ambiguous_count, possible_duplicate) VALUES "
                    "(:id, 't', :state, '{}', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 0, 0, :lease, 0, 0, false)"),
                    {"id": f"n{i}", "state": state, "lease": lease})

        # when upgraded: the sending row's lease is a send lease, the others' a dispatch lease
        command.upgrade(config, "0004")
        with engine.connect() as conn:
            split = conn.execute(text("SELECT state, dispatch_lease_until_ms, send_lease_until_ms "
                                      "FROM notification ORDER BY id")).all()
        # and downgraded again: one column, same values
        command.downgrade(config, "0003")
        with engine.connect() as conn:
            merged = conn.execute(text("SELECT state, lease_until_ms FROM notification ORDER BY id")).all()
    finally:
        engine.dispose()

    assert [tuple(r) for r in split] == [("sending", None, 111), ("queued", 222, None),
                                         ("retry_wait", None, None), ("sent", None, None)]
    assert [tuple(r) for r in merged] == _LEASES


def test_migration_0008_backfills_normalized_recipients_and_drops_them_again(empty_database_url: str) -> None:
    # given notifications stored at 0007, before the recipient index existed
    settings = Settings(database_url=empty_database_url)
    config = alembic_config(settings)
    command.upgrade(config, "0007")
    payloads = {"n1": '{"to": [{"address": "Ana@Example.org", "name": "Ana"}], "cc": [{"address": "b@example.org"}],'
                      ' "bcc": [{"address": "ANA@example.org"}], "body": "c@example.org"}',
                "n2": '{"to": ["d@example.org"]}', "n3": '{"to": []}'}
    engine = make_engine(settings)
    try:
        json_value = "CAST(:payload AS JSON)" if engine.dialect.name == "postgresql" else ":payload"
        with engine.begin() as conn:
            for nid, payload in payloads.items():
                conn.execute(text(
                    "INSERT INTO notification (id, tenant_id, state, payload, created_at, updated_at, fair_rank, "
                    "next_attempt_ms, attempts, ambiguous_count, possible_duplicate) VALUES (:id, 't', 'sent', "
                    f"{json_value}, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 0, 0, 0, 0, false)"),
                    {"id": nid, "payload": payload})

        # when upgraded to 0008: each distinct to, cc and bcc address, trimmed and lower-cased, not the body's
        command.upgrade(config, "0008")
        with engine.connect() as conn:
            rows = {tuple(r) for r in conn.execute(text(
                "SELECT notification_id, tenant_id, address FROM notification_recipient"))}
        # and downgraded again: the table is gone
        command.downgrade(config, "0007")
        with engine.connect() as conn:
            tables = set(conn.dialect.get_table_names(conn))
    finally:
        engine.dispose()

    assert rows == {("n1", "t", "ana@example.org"), ("n1", "t", "b@example.org"), ("n2", "t", "d@example.org")}
    assert "notification_recipient" not in tables and "notification" in tables
