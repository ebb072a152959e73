"""Real infrastructure for tests: a PostgreSQL database of their own on the run's private server
(tests/helpers/servers.py), removed after; free ports; waiting for a listener."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
from sqlalchemy import MetaData

from load.ports import free_port, port_pool
from services.platform.db import Database

__all__ = ["free_port", "make_pg_database", "port_pool", "unique_name"]


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@contextlib.asynccontextmanager
async def make_pg_database(name: str | None = None) -> AsyncIterator[str]:
    """Create a fresh database; yield its `postgresql+asyncpg://` URL; drop it afterwards."""
    from tests.helpers.servers import SERVERS

    name = name or unique_name("foundry_test")
    admin = await asyncio.to_thread(SERVERS.postgres_dsn)
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield admin.replace("postgresql://", "postgresql+asyncpg://").rsplit("/", 1)[0] + f"/{name}"
    finally:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def pg_tables(*metadatas: MetaData) -> AsyncIterator[Database]:
    """A fresh database (`make_pg_database`) holding the tables of `metadatas`, as a `Database`."""
    async with make_pg_database() as url:
        db = Database(url)
        try:
            async with db.engine.begin() as connection:
                for metadata in metadatas:
                    await connection.run_sync(metadata.create_all)
            yield db
        finally:
            await db.dispose()


async def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
    """Wait until something accepts TCP connections on host:port."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return
        except OSError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)
