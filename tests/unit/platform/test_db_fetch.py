"""Database.fetch: a prebuilt Read sees every committed write (also one made just before, by the same
caller), converts values like SQLAlchemy does, and works on a SQLite file and in memory."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    MetaData,
    String,
    Table,
    bindparam,
    insert,
    select,
    update,
)

from services.platform.db.engine import Database
from services.platform.db.reads import Read
from tests.helpers.infra import unique_name

metadata = MetaData()
items = Table(
    "items",
    metadata,
    Column("id", String(20), primary_key=True),
    Column("flag", Boolean, nullable=False),
    Column("data", JSON, nullable=False),
    Column("at", DateTime(timezone=True), nullable=True),
)
BY_ID = Read(select(items).where(items.c.id == bindparam("id")))
POINT_BY_ID = Read(select(items).where(items.c.id == bindparam("id")), point=True)
AT = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)


@pytest.mark.parametrize("read", [BY_ID, POINT_BY_ID], ids=["hop", "point"])
@pytest.mark.parametrize("where", ["file", "memory", "postgresql"])
async def test_fetch_reads_own_write_with_converted_values(
    tmp_path: Path, where: str, read: Read, pg_url: str
) -> None:
    """Also a `point` read (on the loop's thread on a SQLite file) and PostgreSQL (the read pool, in
    the service's schema, JSON decoded as through SQLAlchemy)."""
    schema = None
    if where == "postgresql":
        url, schema = pg_url, unique_name("fetch")
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'f.db'}" if where == "file" else "sqlite+aiosqlite://"
    db = Database(url, schema=schema)
    try:
        await db.ensure_schema()
        async with db.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        assert await db.fetch(read, id="a") == []
        for n in range(3):  # each read right after its write sees it
            async with db.transaction() as session:
                await session.execute(
                    insert(items).values(id=f"i{n}", flag=n == 1, data={"n": [n]}, at=AT if n else None)
                )
            rows = await db.fetch(read, id=f"i{n}")
            assert len(rows) == 1
            # SQLite keeps naive UTC, as via the ORM
            at = (AT if where == "postgresql" else AT.replace(tzinfo=None)) if n else None
            assert dict(zip(read.keys, rows[0], strict=True)) == {
                "id": f"i{n}",
                "flag": n == 1,
                "data": {"n": [n]},
                "at": at,
            }
    finally:
        await db.dispose()
    with pytest.raises(RuntimeError):
        await db.fetch(read, id="i1")


@pytest.mark.parametrize("where", ["file", "postgresql"])
async def test_raw_rows_compare_equal_exactly_while_the_row_is_unchanged(
    tmp_path: Path, where: str, pg_url: str
) -> None:
    """`fetch_raw` leaves the conversion for later: its raw rows (SQLite: strings and integers where
    `fetch` gives datetimes and booleans) compare equal until a write changes the row, and convert
    to what `fetch` returns (GetTask reuses a response on equal raw rows, services/task/api)."""
    schema = None
    if where == "postgresql":
        url, schema = pg_url, unique_name("raw")
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"
    db = Database(url, schema=schema)
    try:
        await db.ensure_schema()
        async with db.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        async with db.transaction() as session:
            await session.execute(insert(items).values(id="a", flag=True, data={"n": [1]}, at=AT))
        first = await db.fetch_raw(POINT_BY_ID, id="a")
        assert first.rows() == await db.fetch(POINT_BY_ID, id="a")
        assert (await db.fetch_raw(POINT_BY_ID, id="a")).raw == first.raw
        async with db.transaction() as session:  # only the time moves, by a microsecond
            await session.execute(
                update(items).where(items.c.id == "a").values(at=AT + dt.timedelta(microseconds=1))
            )
        changed = await db.fetch_raw(POINT_BY_ID, id="a")
        assert changed.raw != first.raw
        assert dict(zip(POINT_BY_ID.keys, changed.rows()[0], strict=True))["at"].microsecond == 678902
    finally:
        await db.dispose()


def test_a_read_with_an_in_list_is_refused_when_compiled() -> None:
    """SQLAlchemy expands an IN list per execution, which a prebuilt statement cannot do: it says so
    rather than sending `__[POSTCOMPILE_…]` to the database."""
    from sqlalchemy.dialects import postgresql

    read = Read(select(items.c.id).where(items.c.id.in_(("a", "b"))))
    with pytest.raises(ValueError, match="IN list"):
        read.compiled(postgresql.asyncpg.dialect())  # type: ignore[no-untyped-call]
