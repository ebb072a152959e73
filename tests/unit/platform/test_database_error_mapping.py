"""How the ErrorMapping interceptor answers database failures: a database that is down, restarting or
that dropped the connection is UNAVAILABLE `DATABASE_UNAVAILABLE` (clients retry it, AIP-194); a bug
(a constraint violation, a codec error, a socket error of other code) stays INTERNAL.

The errors are the drivers' own: asyncpg connecting (through `Database`, as a service does) to fake
servers on loopback that fail the way a crashing PostgreSQL does, or asyncpg and SQLAlchemy exception
classes wrapped the way SQLAlchemy wraps them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2
from grpc_status import rpc_status
from prometheus_client import REGISTRY
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection, PGDialect_asyncpg

from services.platform.db.engine import Database
from services.platform.server.interceptors import ErrorMapping, RequestContext, to_status_proto

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _answer(exc: BaseException) -> tuple[str, str]:
    """(status code name, ErrorInfo reason) the interceptor answers `exc` with."""
    status = to_status_proto(exc, "/test.v1.Test/Call")
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return code_pb2.Code.Name(status.code), info.reason


UNAVAILABLE = ("UNAVAILABLE", "DATABASE_UNAVAILABLE")
INTERNAL = ("INTERNAL", "INTERNAL")


@contextlib.asynccontextmanager
async def _fake_server(handler: Handler) -> AsyncIterator[int]:
    """A TCP server on loopback running `handler` for each connection; yields its port."""
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        with contextlib.suppress(Exception):
            await handler(reader, writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def _error_of_a_service_write(port: int, connect_timeout: float = 5.0) -> BaseException:
    """The exception a service's write transaction raises against the server on `port`."""
    db = Database(f"postgresql+asyncpg://u@127.0.0.1:{port}/db", schema="s", connect_timeout=connect_timeout)
    try:
        async with db.transaction() as session:
            await session.execute(text("SELECT 1"))
    except Exception as exc:
        return exc
    finally:
        await db.dispose()
    raise AssertionError("the write succeeded")


async def _closes_after_ssl_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A server going away while accepting: reads the SSLRequest, closes (EOF, no answer)."""
    await reader.readexactly(8)
    writer.close()


async def _resets_after_ssl_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A server crashing with the connection in its backlog: reads the SSLRequest, answers with RST."""
    await reader.readexactly(8)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A server that accepts TCP and then hangs (a stopped or overloaded postmaster)."""
    await asyncio.sleep(60)


async def test_a_connection_closed_while_connecting_is_unavailable() -> None:
    async with _fake_server(_closes_after_ssl_request) as port:
        exc = await _error_of_a_service_write(port)
    assert (type(exc), str(exc)) == (ConnectionError, "unexpected connection_lost() call")
    assert _answer(exc) == UNAVAILABLE


async def test_a_connection_reset_while_connecting_is_unavailable() -> None:
    async with _fake_server(_resets_after_ssl_request) as port:
        exc = await _error_of_a_service_write(port)
    assert isinstance(exc, ConnectionResetError), repr(exc)  # "[Errno 104] Connection reset by peer"
    assert _answer(exc) == UNAVAILABLE


async def test_a_connect_timeout_is_unavailable() -> None:
    async with _fake_server(_never_answers) as port:
        exc = await _error_of_a_service_write(port, connect_timeout=0.3)
    assert isinstance(exc, TimeoutError), repr(exc)
    assert _answer(exc) == UNAVAILABLE


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


async def _fatal_while_idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Speaks the PostgreSQL protocol up to ReadyForQuery, then does what a fast shutdown (or
    pg_terminate_backend) does to an idle connection: a FATAL 57P01 ErrorResponse. It keeps the
    socket open, as a backend does for the moment before it exits."""
    await reader.readexactly(8)  # SSLRequest
    writer.write(b"N")
    (length,) = struct.unpack("!i", await reader.readexactly(4))
    await reader.readexactly(length - 4)  # StartupMessage
    writer.write(_message(b"R", struct.pack("!i", 0)))  # AuthenticationOk
    for name, value in ((b"server_version", b"15.0"), (b"client_encoding", b"UTF8")):
        writer.write(_message(b"S", name + b"\0" + value + b"\0"))
    writer.write(_message(b"K", struct.pack("!ii", 1234, 5678)))
    writer.write(_message(b"Z", b"I"))
    await writer.drain()
    await asyncio.sleep(0.05)
    fields = b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0"
    writer.write(_message(b"E", fields))
    await writer.drain()
    await asyncio.sleep(60)


async def test_a_query_after_the_server_terminated_an_idle_connection_is_unavailable() -> None:
    """asyncpg reads the unsolicited FATAL as a protocol error, and the next query on the connection
    (a pooled one being pinged, or the next statement or COMMIT of a transaction) fails with
    InternalClientError before the connection's end is read."""
    async with _fake_server(_fatal_while_idle) as port:
        conn = await asyncpg.connect(f"postgresql://u@127.0.0.1:{port}/db", timeout=5)
        try:
            await asyncio.sleep(0.3)  # the FATAL arrives while the connection is idle
            with pytest.raises(asyncpg.InternalClientError) as err:
                await asyncio.wait_for(conn.execute("SELECT 1"), 5)
        finally:
            conn.terminate()
    assert "another operation (2) is in progress" in str(err.value)
    assert _answer(err.value) == UNAVAILABLE
    assert _answer(_as_sqlalchemy_raises(err.value)) == UNAVAILABLE


def _as_sqlalchemy_raises(error: Exception, *, invalidated: bool = False) -> sa_exc.DBAPIError:
    """`error` (an asyncpg exception) translated and wrapped the way SQLAlchemy's asyncpg dialect
    and Connection do: sqlalchemy.exc.X(orig=dialect's X) from the asyncpg error."""
    dbapi = PGDialect_asyncpg.import_dbapi()
    try:
        AsyncAdapt_asyncpg_connection._handle_exception_no_connection(dbapi, error)
    except dbapi.Error as translated:
        wrapped = sa_exc.DBAPIError.instance(
            "SELECT 1", None, translated, dbapi.Error, connection_invalidated=invalidated
        )
        assert isinstance(wrapped, sa_exc.DBAPIError)
        wrapped.__cause__ = translated
        return wrapped
    raise AssertionError("not translated")


def test_an_error_sqlalchemy_classified_as_a_disconnect_is_unavailable() -> None:
    error = asyncpg.InterfaceError("cannot perform operation: another operation is in progress")
    assert _answer(_as_sqlalchemy_raises(error, invalidated=True)) == UNAVAILABLE
    assert _answer(_as_sqlalchemy_raises(error, invalidated=False)) == INTERNAL  # a concurrency bug


def test_a_lost_connection_mid_query_and_a_server_shutting_down_are_unavailable() -> None:
    lost = asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
    lost.__cause__ = asyncpg.AdminShutdownError("terminating connection due to administrator command")
    closed = asyncpg.InterfaceError("cannot perform operation: connection is closed")
    shutting_down = asyncpg.CannotConnectNowError("the database system is shutting down")
    for error in (lost, closed, shutting_down):
        assert _answer(error) == UNAVAILABLE, error
        assert _answer(_as_sqlalchemy_raises(error)) == UNAVAILABLE, error


def _raised(error: Exception) -> Exception:
    try:
        raise error
    except Exception as exc:
        return exc


def test_bugs_stay_internal() -> None:
    """Constraint violations, SQL errors, asyncpg's other internal errors, and socket errors or
    timeouts raised by code that is not the database driver."""
    unique = asyncpg.UniqueViolationError('duplicate key value violates unique constraint "users_pkey"')
    undefined = asyncpg.UndefinedTableError('relation "nope" does not exist')
    codec = asyncpg.InternalClientError("no binary format encoder for type foo (OID 1234)")
    busy = asyncpg.InternalClientError("cannot switch to state 15; another operation (12) is in progress")
    for error in (unique, undefined, codec, busy):
        assert _answer(error) == INTERNAL, error
        assert _answer(_as_sqlalchemy_raises(error)) == INTERNAL, error
    assert _answer(_raised(ConnectionResetError(104, "Connection reset by peer"))) == INTERNAL
    assert _answer(_raised(TimeoutError())) == INTERNAL
    assert _answer(_raised(BrokenPipeError(32, "Broken pipe"))) == INTERNAL


async def test_the_rpc_answers_and_counts_unavailable() -> None:
    """Through a real server: the client gets UNAVAILABLE DATABASE_UNAVAILABLE and the per-RPC
    metric (RequestContext, inside ErrorMapping) counts UNAVAILABLE, not INTERNAL."""
    async with _fake_server(_resets_after_ssl_request) as db_port:

        async def write(request: bytes, context: Any) -> bytes:
            raise await _error_of_a_service_write(db_port)

        handler = grpc.method_handlers_generic_handler(
            "test.v1.Db", {"Write": grpc.unary_unary_rpc_method_handler(write)}
        )
        server = grpc.aio.server(
            interceptors=[ErrorMapping(), RequestContext("dbtest")], options=[("grpc.so_reuseport", 0)]
        )
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        labels = {"service": "dbtest", "method": "/test.v1.Db/Write", "code": "UNAVAILABLE"}
        before = REGISTRY.get_sample_value("foundry_grpc_server_handled_total", labels) or 0.0
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await channel.unary_unary("/test.v1.Db/Write")(b"", timeout=10)
        finally:
            await server.stop(None)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    status = rpc_status.from_call(err.value)
    info = error_details_pb2.ErrorInfo()
    assert status is not None and status.details[0].Unpack(info)
    assert info.reason == "DATABASE_UNAVAILABLE"
    assert REGISTRY.get_sample_value("foundry_grpc_server_handled_total", labels) == before + 1
