"""The Alembic migrations build exactly the schema the models describe."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from shared import models  # noqa: F401  (registers the tables)
from shared.db import make_engine
from shared.settings import Settings


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
