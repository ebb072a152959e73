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

import asyncio
import contextlib
import json
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from services.platform.db.reads import Fetched, Read
from services.platform.db.write_queue import WriteQueue
from services.platform.logging import get_logger

log = get_logger(__name__)
AfterCommit = Callable[[], Any]
_AFTER_COMMIT = "foundry_after_commit"
_DEFERRED = "foundry_deferred_rows"  # present (a dict) only in sessions of `Database.transaction`


def after_commit(session: AsyncSession, callback: AfterCommit) -> None:
    """Run `callback` (sync, or returning an awaitable) once the session's transaction commits."""
    session.info.setdefault(_AFTER_COMMIT, []).append(callback)


async def defer_insert(session: AsyncSession, statement: Any, row: dict[str, Any]) -> None:
    """Insert `row` with the prebuilt INSERT `statement` in this transaction, batched: in a session of
    `Database.transaction` the rows of each statement are written just before the commit, in the
    order given, as one executemany (one round trip, or one hop to SQLite's thread, instead of one
    per row); elsewhere at once. For rows nothing reads back inside the transaction (outbox
    messages, watch changes): they commit, or roll back, with it either way."""
    deferred: dict[int, tuple[Any, list[dict[str, Any]]]] | None = session.info.get(_DEFERRED)
    if deferred is None:
        await session.execute(statement, row)
    else:
        deferred.setdefault(id(statement), (statement, []))[1].append(row)


async def _write_deferred(session: AsyncSession) -> None:
    deferred: dict[int, tuple[Any, list[dict[str, Any]]]] = session.info.get(_DEFERRED) or {}
    while deferred:
        statement, rows = deferred.pop(next(iter(deferred)))
        await session.execute(statement, rows if len(rows) > 1 else rows[0])


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
            # Every connection opened stays in the pool: an overflow connection (closed when given
            # back) costs a connect, a backend fork and the dialect's setup queries per transaction
            # under load (task_throughput: 11 tasks/s with 5 + 5 overflow, 14 with 10 kept).
            kwargs["pool_size"] = 2 * pool_size
            kwargs["max_overflow"] = 0
            # A server that accepts TCP and never answers must not hang a caller for asyncpg's 60 s.
            kwargs["pool_timeout"] = connect_timeout
            kwargs["connect_args"] = {"timeout": connect_timeout}
            if schema:
                kwargs["connect_args"]["server_settings"] = {"search_path": schema}
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            _install_sqlite_pragmas(self.engine)
        else:
            _refuse_closed_connections(self.engine)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = async_sessionmaker(
            self.engine.execution_options(
                **({"foundry_readonly": True} if self.is_sqlite else {"isolation_level": "REPEATABLE READ"})
            ),
            expire_on_commit=False,
        )
        # SQLite has one writer at a time: queue this process's writers here (FIFO, no polling).
        self._writers: WriteQueue | None = WriteQueue() if self.is_sqlite else None
        # `fetch` on a SQLite file: reader threads, each with its own read-only sqlite3 connection.
        path = self.engine.url.database if self.is_sqlite and not self.engine.url.query else None
        self._read_path = path if path and path != ":memory:" and not path.startswith("file:") else None
        self._readers: ThreadPoolExecutor | None = None
        self._reader_local = threading.local()
        self._reader_connections: list[sqlite3.Connection] = []
        self._point_reader: sqlite3.Connection | None = None  # point reads, on the loop's thread
        # `fetch` on PostgreSQL: an asyncpg pool of its own (created on first use).
        self._pool_size, self._connect_timeout = pool_size, connect_timeout
        self._read_pool: asyncio.Future[Any] | None = None
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
            session.info[_DEFERRED] = {}
            async with session.begin():
                yield session
                await _write_deferred(session)
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

    async def fetch(self, read: Read, **params: Any) -> list[list[Any]]:
        """The rows of one prebuilt SELECT (`services.platform.db.reads`), as one statement: on a SQLite
        file one hop to a reader thread (its own read-only connection; a `point` read runs on the
        loop's thread), on PostgreSQL a connection of the read pool without BEGIN/COMMIT. A single
        statement sees one consistent committed state. Values are converted as SQLAlchemy converts
        them (SQLite: datetimes, booleans, JSON)."""
        return (await self.fetch_raw(read, **params)).rows()

    async def fetch_raw(self, read: Read, **params: Any) -> Fetched:
        """Like `fetch`, with the conversion left for later (`Fetched.rows()`): for a caller that
        compares what it read with an earlier read first and may need no values at all."""
        if self.closed:
            raise RuntimeError("database engine is closed (the process is shutting down)")
        compiled = read.compiled(self.engine.dialect)
        args = compiled.args(params)
        if self._read_path is not None and read.point:
            return Fetched(self._sqlite_point_read(compiled.sql, args), compiled)
        if self._read_path is not None:
            if self._readers is None:
                self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sqlite-read")
            loop = asyncio.get_running_loop()
            raw = await loop.run_in_executor(self._readers, self._sqlite_read, compiled.sql, args)
            return Fetched(raw, compiled)
        if self.is_sqlite:  # in-memory: only the engine's own connection sees the data
            async with self._read_sessions() as session, session.begin():
                conn = await session.connection()
                return Fetched((await conn.exec_driver_sql(compiled.sql, tuple(args))).all(), compiled)
        pool = await self._postgres_read_pool()
        return Fetched(await pool.fetch(compiled.sql, *args), compiled)

    async def _postgres_read_pool(self) -> Any:
        """The asyncpg pool of `fetch`: up to twice `pool_size` connections (as many as the engine's
        pool), kept open, with the engine's connect arguments, search_path and JSON decoding
        (SQLAlchemy's asyncpg dialect decodes json/jsonb in the driver, so its result processors
        expect decoded values). A connection the server dropped fails one call (UNAVAILABLE, see
        the ErrorMapping interceptor) and is replaced on the next acquire."""
        if self._read_pool is None:
            self._read_pool = asyncio.get_running_loop().create_future()
            try:
                pool = await self._create_read_pool()
            except BaseException as exc:
                future, self._read_pool = self._read_pool, None
                future.set_exception(exc)
                future.exception()  # retrieved: the next call retries
                raise
            self._read_pool.set_result(pool)
        return await asyncio.shield(self._read_pool)

    async def _create_read_pool(self) -> Any:
        import asyncpg  # local: the SQLite shape does not need it

        _, opts = self.engine.dialect.create_connect_args(self.engine.url)
        for key in ("prepared_statement_cache_size", "prepared_statement_name_func", "async_fallback"):
            opts.pop(key, None)
        if self.schema:
            opts["server_settings"] = {"search_path": self.schema}

        async def init(conn: Any) -> None:
            await conn.set_type_codec(
                "json",
                encoder=str.encode,
                decoder=lambda b: json.loads(b.decode()),
                schema="pg_catalog",
                format="binary",
            )
            await conn.set_type_codec(
                "jsonb",
                encoder=lambda s: b"\x01" + s.encode(),
                decoder=lambda b: json.loads(b[1:].decode()),
                schema="pg_catalog",
                format="binary",
            )

        async def keep_session(conn: Any) -> None:
            """Release without the default reset query (`RESET ALL; UNLISTEN *; …`), a second round
            trip per read: this pool only runs single SELECTs, which leave no session state (asyncpg
            still rolls back an open transaction before this is called)."""

        return await asyncpg.create_pool(
            min_size=0,
            max_size=2 * self._pool_size,
            timeout=self._connect_timeout,
            init=init,
            reset=keep_session,
            **opts,
        )

    def _sqlite_point_read(self, sql: str, args: list[Any]) -> list[Any]:
        conn = self._point_reader
        if conn is None:
            assert self._read_path is not None
            conn = sqlite3.connect(self._read_path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA query_only=ON")
            self._point_reader = conn
        return conn.execute(sql, args).fetchall()

    def _sqlite_read(self, sql: str, args: list[Any]) -> list[Any]:
        conn: sqlite3.Connection | None = getattr(self._reader_local, "conn", None)
        if conn is None:
            assert self._read_path is not None
            conn = sqlite3.connect(self._read_path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA query_only=ON")
            self._reader_local.conn = conn
            self._reader_connections.append(conn)
        return conn.execute(sql, args).fetchall()

    async def dispose(self) -> None:
        """Close every pooled connection. Called last in the drain, when no handler is active."""
        self.closed = True
        if self._readers is not None:
            await asyncio.to_thread(self._readers.shutdown, True)
            for conn in self._reader_connections:
                conn.close()
            self._reader_connections.clear()
        if self._point_reader is not None:
            self._point_reader.close()
            self._point_reader = None
        read_pool, self._read_pool = self._read_pool, None
        if read_pool is not None and read_pool.done() and not read_pool.exception():
            await read_pool.result().close()
        await self.engine.dispose()


def _refuse_closed_connections(engine: AsyncEngine) -> None:
    """At checkout, swap a pooled connection the driver already saw closed (the server restarted,
    crashed or ended it) for a new one, as asyncpg's own pool does on acquire.

    This replaces SQLAlchemy's `pool_pre_ping`, which with asyncpg costs three round trips (BEGIN,
    `;`, ROLLBACK) before every transaction, more than a typical transaction's own statements. A
    connection that breaks unseen (no FIN reached us) fails its first statement instead; SQLAlchemy
    then invalidates the pool and the error is answered UNAVAILABLE (the ErrorMapping interceptor),
    which callers retry (`tests/e2e/test_postgres_restart.py` crashes the server under load).
    """

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if record.driver_connection.is_closed():
            raise DisconnectionError("the server closed this pooled connection")


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
