"""The one timestamp column type (`services.platform.db.UtcDateTime`): whatever offset a datetime is
written with, it reads back as the same instant in aware UTC, and stored values sort and compare as
time does, on SQLite (text without an offset) and on PostgreSQL (timestamptz)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa

from services.platform.db import Database, UtcDateTime
from tests.helpers.infra import unique_name

PARIS = dt.timezone(dt.timedelta(hours=2))


async def _check(db: Database) -> None:
    metadata = sa.MetaData()
    times = sa.Table(
        "times", metadata, sa.Column("id", sa.Integer, primary_key=True), sa.Column("at", UtcDateTime())
    )
    values = {
        1: dt.datetime(2024, 5, 1, 14, 0, 0, 123456, tzinfo=PARIS),  # 12:00:00.123456Z
        2: dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC),
        3: dt.datetime(2024, 5, 1, 11, 0),  # naive: taken as UTC
        4: None,
    }
    await db.ensure_schema()
    async with db.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        await conn.execute(times.insert(), [{"id": k, "at": v} for k, v in values.items()])
    async with db.engine.connect() as conn:
        read = dict(tuple(r) for r in await conn.execute(sa.select(times.c.id, times.c.at)))
        assert read[1] == dt.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
        assert read[2] == values[2]
        assert read[3] == dt.datetime(2024, 5, 1, 11, 0, tzinfo=dt.UTC)
        assert read[4] is None
        for value in (read[1], read[2], read[3]):
            assert value is not None and value.tzinfo is not None and value.utcoffset() == dt.timedelta(0)
        ordered = await conn.execute(
            sa.select(times.c.id).where(times.c.at.is_not(None)).order_by(times.c.at.desc())
        )
        assert [r[0] for r in ordered] == [2, 1, 3]
        before = dt.datetime(2024, 5, 1, 14, 30, tzinfo=PARIS)  # 12:30Z, given in another offset
        earlier = await conn.execute(sa.select(times.c.id).where(times.c.at < before).order_by(times.c.id))
        assert [r[0] for r in earlier] == [1, 3]


async def test_utc_datetime_on_sqlite(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}")
    try:
        await _check(db)
    finally:
        await db.dispose()


@pytest.mark.integration
async def test_utc_datetime_on_postgres(pg_url: str) -> None:
    db = Database(pg_url, schema=unique_name("times"))
    try:
        await _check(db)
    finally:
        await db.dispose()
