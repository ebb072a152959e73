"""A PostgreSQL transaction of `Database` costs its own statements only, and a pooled connection the
server ended is replaced at checkout (real PostgreSQL: the run's server, a backend terminated with
`pg_terminate_backend`, as a restart or an idle timeout ends it)."""

from __future__ import annotations

from typing import Any

import asyncpg
from sqlalchemy import text

from services.platform.db.engine import Database
from tests.helpers.eventually import assert_eventually


async def _driver_connection(db: Database) -> tuple[int, Any]:
    """(backend pid, asyncpg connection) of the connection a transaction gets from the pool."""
    async with db.transaction() as session:
        pid = int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())
        raw = await (await session.connection()).get_raw_connection()
        return pid, raw.driver_connection


async def test_a_transaction_sends_begin_its_statements_and_commit_and_nothing_else(pg_url: str) -> None:
    db = Database(pg_url, pool_size=1)
    try:
        _, conn = await _driver_connection(db)
        sent: list[str] = []  # what asyncpg sends as simple queries (prepared statements are not logged)
        conn.add_query_logger(lambda record: sent.append(record.query.strip().rstrip(";").upper()))
        async with db.transaction() as session:
            assert (await session.execute(text("SELECT 41 + 1"))).scalar_one() == 42
        # No liveness ping first (SQLAlchemy's pool_pre_ping: BEGIN, `;`, ROLLBACK before each transaction).
        assert sent == ["BEGIN", "COMMIT"], sent
    finally:
        await db.dispose()


async def test_a_pooled_connection_the_server_ended_is_replaced_at_checkout(pg_url: str) -> None:
    db = Database(pg_url, pool_size=1)
    admin = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        pid, conn = await _driver_connection(db)
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)

        async def seen_closed() -> None:
            assert conn.is_closed()

        await assert_eventually(seen_closed, timeout=10, interval=0.02)
        # The next transaction works, on a new backend: the caller never sees the dead connection.
        new_pid, _ = await _driver_connection(db)
        assert new_pid != pid
    finally:
        await admin.close()
        await db.dispose()
