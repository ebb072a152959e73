"""The baseline server of the side-by-side benchmarks: `python -m bench.bare_server --port P
[--db PATH]`, a grpc.aio server with generic (bytes in, bytes out) handlers and nothing else:

    /bench.Bare/Echo    returns the request bytes
    /bench.Bare/Insert  inserts one row (id, payload) in one transaction through the platform's
                        `Database` (SQLAlchemy async, the same SQLite pragmas as the services)
                        into --db-url and returns b""

It runs on uvloop like the services (services.platform.process.run_forever)."""

from __future__ import annotations

import argparse
import uuid

import grpc
import uvloop
from sqlalchemy import Column, LargeBinary, MetaData, String, Table

from services.platform.db.engine import Database

ECHO = "/bench.Bare/Echo"
INSERT = "/bench.Bare/Insert"
metadata = MetaData()
rows = Table("rows", metadata, Column("id", String(36), primary_key=True), Column("payload", LargeBinary))


def _identity(b: bytes) -> bytes:
    return b


async def serve(port: int, db_url: str) -> None:
    db = Database(db_url)
    async with db.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)

    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    async def insert(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        async with db.transaction() as session:
            await session.execute(rows.insert().values(id=str(uuid.uuid4()), payload=request))
        return b""

    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(echo, _identity, _identity),
        "Insert": grpc.unary_unary_rpc_method_handler(insert, _identity, _identity),
    }
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Bare", handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--db-url", required=True, help="e.g. sqlite+aiosqlite:////tmp/bare.sqlite3")
    args = p.parse_args()
    uvloop.run(serve(args.port, args.db_url))


if __name__ == "__main__":
    main()
