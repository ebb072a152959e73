"""`defer_insert`: rows of a `Database.transaction` are written in one executemany just before the
commit, in order, and commit or roll back with it; outside such a transaction they are written at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.platform.db.engine import Database, defer_insert
from tests.helpers.infra import unique_name

metadata = MetaData()
rows = Table(
    "rows",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(20), nullable=False),
)
INSERT = insert(rows)


async def _names(db: Database) -> list[str]:
    async with db.snapshot() as session:
        return list((await session.execute(select(rows.c.name).order_by(rows.c.id))).scalars())


@pytest.mark.parametrize("where", ["sqlite", "postgresql"])
async def test_deferred_rows_commit_in_order_or_roll_back(tmp_path: Path, where: str, pg_url: str) -> None:
    if where == "postgresql":
        db = Database(pg_url, schema=unique_name("deferred"))
    else:
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'd.db'}")
    try:
        await db.ensure_schema()
        async with db.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        async with db.transaction() as session:
            for name in ("a", "b", "c"):
                await defer_insert(session, INSERT, {"name": name})
            # not written yet: nothing reads these rows back inside the transaction
            assert (await session.execute(select(func.count()).select_from(rows))).scalar_one() == 0
        assert await _names(db) == ["a", "b", "c"]
        with pytest.raises(RuntimeError):
            async with db.transaction() as session:
                await defer_insert(session, INSERT, {"name": "lost"})
                raise RuntimeError("rolled back")
        assert await _names(db) == ["a", "b", "c"]
        async with db.engine.connect() as conn:  # not a Database.transaction: written at once
            async with AsyncSession(bind=conn) as session, session.begin():
                await defer_insert(session, INSERT, {"name": "now"})
                assert (await session.execute(select(func.count()).select_from(rows))).scalar_one() == 4
    finally:
        await db.dispose()
