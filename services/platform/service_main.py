"""`python -m services.<svc> [serve|migrate]`: the entry point shared by the four services."""

from __future__ import annotations

import argparse
import asyncio
import sys

from services.platform.db import Database
from services.platform.db.migrations import upgrade
from services.platform.logging import configure, get_logger
from services.platform.process import run_forever
from services.platform.server.host import ServiceHost, Wire
from services.platform.settings import ServiceName, Settings


async def _migrate(settings: Settings, service: ServiceName) -> None:
    db = Database(
        settings.database_url_for(service),
        schema=settings.schema_for(service),
        connect_timeout=settings.database_connect_timeout_seconds,
    )
    try:
        await upgrade(db, service)
    finally:
        await db.dispose()
    get_logger("foundry.migrate").info("migrated", service=service)


def service_main(service: ServiceName, wire: Wire, argv: list[str] | None = None) -> int:
    """Parse the command line and run `serve` (default) or `migrate` for `service`."""
    parser = argparse.ArgumentParser(prog=f"python -m services.{service}")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "migrate"])
    args = parser.parse_args(argv)
    settings = Settings()
    configure(settings.log_level, settings.log_format)
    if args.command == "migrate":
        asyncio.run(_migrate(settings, service))
        return 0
    if settings.embedded:
        print(
            f"services.{service}: FOUNDRY_AMQP_URL is not set. In-process messaging only works when every "
            "service runs in one process: use `make run` (python -m services.embedded), or set "
            "FOUNDRY_AMQP_URL and FOUNDRY_DATABASE_URL to run services as separate processes.",
            file=sys.stderr,
        )
        return 2
    run_forever(
        settings,
        service,
        lambda broker: [ServiceHost(settings, service, broker, wire)],
        spawns_processes=service == "sandbox",
    )
    return 0
