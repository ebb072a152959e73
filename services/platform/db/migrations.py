"""Alembic glue shared by every service: each service keeps its own `store/migrations/` folder
(its own history and `alembic_version` table, in its own schema) and calls into this module.

    python -m services.<svc> migrate          upgrade the service's schema to head (Kubernetes Job)
    python -m services.platform.db.migrations revision <svc> -m "message"
                                              autogenerate a revision against a scratch SQLite file
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from pathlib import Path
from typing import Any

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection

from services.platform.db.engine import Database
from services.platform.db.tables import platform_metadata


def script_location(service: str) -> str:
    """The migrations folder of `service` (`services/<service>/store/migrations`)."""
    module = importlib.import_module(f"services.{service}.store")
    return str(Path(module.__file__ or "").parent / "migrations")


def _config(location: str, connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", location)
    cfg.attributes["connection"] = connection
    return cfg


async def upgrade(db: Database, service: str) -> None:
    """Bring `service`'s tables to the newest revision (creates the schema first on PostgreSQL)."""
    await db.ensure_schema()
    location = script_location(service)
    async with db.engine.begin() as conn:
        await conn.run_sync(lambda sync_conn: command.upgrade(_config(location, sync_conn), "head"))


def run_env(metadata: MetaData) -> None:
    """Body of every service's `env.py`: migrate the platform tables and the service's own tables."""
    connection: Any = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through `python -m services.<svc> migrate`")
    context.configure(
        connection=connection,
        target_metadata=[platform_metadata, metadata],
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _autogenerate(service: str, message: str) -> None:
    import asyncio

    async def go() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            db = Database(f"sqlite+aiosqlite:///{tmp}/scratch.sqlite3")
            location = script_location(service)
            async with db.engine.begin() as conn:
                await conn.run_sync(lambda c: command.upgrade(_config(location, c), "head"))
                await conn.run_sync(
                    lambda c: command.revision(_config(location, c), message=message, autogenerate=True)
                )
            await db.dispose()

    asyncio.run(go())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.platform.db.migrations")
    sub = parser.add_subparsers(dest="cmd", required=True)
    rev = sub.add_parser("revision", help="autogenerate a revision for one service")
    rev.add_argument("service")
    rev.add_argument("-m", "--message", required=True)
    args = parser.parse_args(argv)
    _autogenerate(args.service, args.message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
