"""The Alembic migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from bot.crm.models import Base
from bot.db import get_engine


def test_migrated_database_matches_the_models(crm_url: str) -> None:
    with get_engine(crm_url).connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == [], "models and migrations differ: add a migration (alembic revision --autogenerate)"
