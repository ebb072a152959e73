"""Real infrastructure for tests: a PostgreSQL database of their own on the run's private server
(tests/helpers/servers.py), removed after; free ports; waiting for a listener."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
from sqlalchemy import MetaData

from services.platform.db import Database


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_handed_out: set[int] = set()


def _port_pool() -> range:
    """The 12000 ports below the ephemeral range, or this pytest-xdist worker's share of them
    (`make test` runs the suite in parallel workers, separate processes): each worker's `_handed_out`
    only knows its own ports, so two workers must never choose from the same ones (a gRPC server of
    one took the other's port between its choice and its bind)."""
    low, _ = _ephemeral_range()
    start = max(1024, low - 12000)
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not (worker.startswith("gw") and worker[2:].isdigit() and count.isdigit()):
        return range(start, low)
    index, share = int(worker[2:]), (low - start) // int(count)
    if index >= int(count):  # a replacement worker (the Makefile allows none): the whole pool
        return range(start, low)
    return range(start + index * share, start + (index + 1) * share)


def free_port() -> int:
    """A port free to listen on now, chosen below the kernel's ephemeral range: a port the kernel
    picked for `bind(0)` is handed out again to outgoing connections (PostgreSQL, RabbitMQ, gRPC
    clients of other test processes), which took a gateway's admin port between its choice and
    its bind in one CI run. Ports from this process are never handed out twice, and parallel test workers
    choose from separate shares (`_port_pool`)."""
    pool = _port_pool()
    for _ in range(200 if pool else 0):
        port = random.choice(pool)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # the whole pool is busy: fall back to the kernel's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
