"""`python -m services.mesh` (`make run-mesh`): one OS process per service plus the gateway, on
PostgreSQL and RabbitMQ — the shape Kubernetes runs, on this machine.

Defaults: FOUNDRY_DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/foundry (created if missing)
and FOUNDRY_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/. Each child gets its own admin port
(9464 + index). SIGINT/SIGTERM is forwarded to every child, which drains and exits.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import asyncpg

from services.platform.settings import SERVICE_NAMES

DEFAULT_DB = "postgresql+asyncpg://postgres@127.0.0.1:5432/foundry"
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"


async def ensure_database(url: str) -> None:
    """Create the database named in `url` when it does not exist yet."""
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    base, _, name = dsn.rpartition("/")
    conn = await asyncpg.connect(f"{base}/postgres")
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def main() -> int:
    env = dict(os.environ)
    env.setdefault("FOUNDRY_DATABASE_URL", DEFAULT_DB)
    env.setdefault("FOUNDRY_AMQP_URL", DEFAULT_AMQP)
    env.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")  # see services.platform.process._uvloop_is_safe
    asyncio.run(ensure_database(env["FOUNDRY_DATABASE_URL"]))
    base_admin = int(env.get("FOUNDRY_METRICS_PORT", "9464"))
    children: list[subprocess.Popen[bytes]] = []
    commands = [[sys.executable, "-m", f"services.{name}"] for name in SERVICE_NAMES]
    commands.append([sys.executable, "-m", "gateway"])
    for index, command in enumerate(commands):
        child_env = {**env, "FOUNDRY_METRICS_PORT": str(base_admin + index)}
        children.append(subprocess.Popen(command, env=child_env))

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    codes = [child.wait() for child in children]
    return max(codes, default=0)


if __name__ == "__main__":
    sys.exit(main())
