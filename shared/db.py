"""Database engines and migrations (PostgreSQL in production, SQLite embedded).

Translates SQLAlchemy's URL conventions so `postgresql://` means psycopg 3, and makes SQLite
fit for several processes (WAL, a busy timeout, immediate transactions for claims).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event

from shared.settings import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def database_url(settings: Settings) -> str:
    """The SQLAlchemy URL for these settings (embedded SQLite when DATABASE_URL is unset)."""
    url = settings.database_url or settings.sqlite_url()
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def is_sqlite(engine: Engine) -> bool:
    """True when the engine talks to SQLite."""
    return engine.dialect.name == "sqlite"


def make_engine(settings: Settings, *, pool_size: int = 10) -> Engine:
    """Create the engine; SQLite gets WAL and a long busy timeout so processes can share it."""
    url = database_url(settings)
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    # No pre-ping: it costs a round trip per checkout on the hot path. A dead connection fails
    # its statement instead; outcome writes retry (worker.store) and claims are re-dispatched.
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800)


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy, not pysqlite, decide when transactions begin (see _sqlite_on_begin).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.close()


def _sqlite_on_begin(conn: Any) -> None:
    # IMMEDIATE takes the write lock up front: a claim's read and write cannot interleave with
    # another process's, and busy_timeout applies instead of a deadlock error on upgrade.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def alembic_config(settings: Settings) -> Config:
    """An Alembic config pointing at our migrations and this database."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", database_url(settings).replace("%", "%%"))
    return cfg


def migrate(settings: Settings) -> None:
    """Upgrade the database to the newest migration."""
    if settings.database_url is None:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(settings), "head")


def migrations_current(engine: Engine) -> bool:
    """True when the database is at the newest migration."""
    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision() == head
