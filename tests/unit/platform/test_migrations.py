"""Every service's Alembic history builds exactly the tables its code declares (platform tables
included), on SQLite and on PostgreSQL in the service's own schema."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from services.platform.db import Database, platform_metadata
from services.platform.db.migrations import upgrade
from services.platform.settings import SERVICE_NAMES
from tests.helpers.infra import unique_name


def _diffs(database: Database, service: str) -> Any:
    metadata = importlib.import_module(f"services.{service}.store.tables").metadata

    def compare(sync_conn: Any) -> Any:
        context = MigrationContext.configure(sync_conn, opts={"compare_type": True})
        # alembic compares against a sequence of MetaData (AutogenContext takes one); the annotation of
        # compare_metadata names only a single MetaData.
        return compare_metadata(context, [platform_metadata, metadata])  # type: ignore[arg-type]

    return compare


@pytest.mark.parametrize("service", SERVICE_NAMES)
async def test_migrations_match_the_declared_tables_on_sqlite(service: str, tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}")
    try:
        await upgrade(db, service)
        async with db.engine.connect() as conn:
            assert await conn.run_sync(_diffs(db, service)) == []
    finally:
        await db.dispose()


@pytest.mark.integration
@pytest.mark.parametrize("service", SERVICE_NAMES)
async def test_migrations_match_the_declared_tables_on_postgres(service: str, pg_url: str) -> None:
    db = Database(pg_url, schema=unique_name(service))
    try:
        await upgrade(db, service)
        async with db.engine.connect() as conn:
            assert await conn.run_sync(_diffs(db, service)) == []
    finally:
        await db.dispose()
