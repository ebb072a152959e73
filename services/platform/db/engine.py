"""One async SQLAlchemy engine per service, on PostgreSQL (asyncpg, a schema per service) or SQLite.

`Database.transaction()` is the only way service code writes: it opens a transaction, commits it,
then runs the callbacks registered with `after_commit` (wake the outbox relay, notify watchers).
On SQLite, write transactions start with `BEGIN IMMEDIATE` so two writers queue on the lock instead
of failing with "database is locked" when one upgrades from read to write, and the writers of one
process first queue in a `WriteQueue`: SQLite's busy handler polls with sleeps growing to 100 ms, so
under contention a waiting writer sleeps long after the lock is free (with 50 concurrent writers the
p99 of a one-row insert was 8 times its median); the queue hands over in FIFO order at once, with
background writers (`transaction(background=True)`) behind foreground ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from services.platform.db.write_queue import WriteQueue
from services.platform.logging import get_logger

log = get_logger(__name__)
AfterCommit = Callable[[], Any]
_AFTER_COMMIT = "foundry_after_commit"


def after_commit(session: AsyncSession, callback: AfterCommit) -> None:
    """Run `callback` (sync, or returning an awaitable) once the session's transaction commits."""
    session.info.setdefault(_AFTER_COMMIT, []).append(callback)


class Database:
    """Engine, session factory and transaction helper for one service's tables.

    Args:
        url: SQLAlchemy URL, `postgresql+asyncpg://…` or `sqlite+aiosqlite:///path`.
        schema: PostgreSQL schema the service owns (set as search_path); None on SQLite.
        connect_timeout: seconds for one PostgreSQL connection attempt, and for a free pool slot.
    """

    def __init__(
        self, url: str, *, schema: str | None = None, pool_size: int = 10, connect_timeout: float = 10.0
    ) -> None:
        self.url = url
        self.schema = schema
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs["pool_size"] = pool_size
            kwargs["max_overflow"] = pool_size
            kwargs["pool_pre_ping"] = True
            # A server that accepts TCP and never answers must not hang a caller for asyncpg's 60 s.
            kwargs["pool_timeout"] = connect_timeout
            kwargs["connect_args"] = {"timeout": connect_timeout}
            if schema:
                kwargs["connect_args"]["server_settings"] = {"search_path": schema}
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            _install_sqlite_pragmas(self.engine)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = async_sessionmaker(
            self.engine.execution_options(
                **({"foundry_readonly": True} if self.is_sqlite else {"isolation_level": "REPEATABLE READ"})
            ),
            expire_on_commit=False,
        )
        # SQLite has one writer at a time: queue this process's writers here (FIFO, no polling).
        self._writers: WriteQueue | None = WriteQueue() if self.is_sqlite else None
        self.closed = False

    async def ensure_schema(self) -> None:
        """Create the service's PostgreSQL schema if missing (no-op on SQLite)."""
        if self.schema and not self.is_sqlite:
            async with self.engine.begin() as conn:
                await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))

    @contextlib.asynccontextmanager
    async def transaction(self, *, background: bool = False) -> AsyncIterator[AsyncSession]:
        """A read-write transaction; commits on success, rolls back on error, then runs after-commit hooks.

        `background=True` marks work nobody is waiting on (e.g. appending to the audit log): on
        SQLite it takes the write lock after the foreground writers already queued (see
        `WriteQueue`); on PostgreSQL, which locks rows, it changes nothing.
        """
        if self.closed:
            raise RuntimeError("database engine is closed (the process is shutting down)")
        gate = self._writers.hold(background=background) if self._writers else contextlib.nullcontext()
        async with gate, self._sessions() as session:
            async with session.begin():
                yield session
            callbacks = session.info.pop(_AFTER_COMMIT, [])
        for callback in callbacks:
            result = callback()
            if hasattr(result, "__await__"):
                await result

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[AsyncSession]:
        """A read-only transaction that sees one consistent state (REPEATABLE READ on PostgreSQL)."""
        if self.closed:
            raise RuntimeError("database engine is closed (the process is shutting down)")
        async with self._read_sessions() as session, session.begin():
            yield session

    async def dispose(self) -> None:
        """Close every pooled connection. Called last in the drain, when no handler is active."""
        self.closed = True
        await self.engine.dispose()


def _install_sqlite_pragmas(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        readonly = conn.get_execution_options().get("foundry_readonly", False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")
