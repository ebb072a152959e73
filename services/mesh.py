"""`python -m services.mesh` (`make run-mesh`): one OS process per service plus the gateway, on
PostgreSQL and RabbitMQ — the shape Kubernetes runs, on this machine.

Defaults: FOUNDRY_DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/foundry (created if missing)
and FOUNDRY_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/. Each child gets its own admin port
(9464 + index). A child that dies is restarted (`Supervisor`: backoff 1 s doubling to 30 s) and the
log says which and how; SIGINT/SIGTERM is forwarded to every child, which drains and exits.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import asyncpg

from services.platform.aio import cancel_and_wait, where_tasks_wait
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


RESTART_DELAY_SECONDS = 1.0  # doubles per crash in a row, up to RESTART_DELAY_MAX_SECONDS
RESTART_DELAY_MAX_SECONDS = 30.0
STABLE_SECONDS = 60.0  # a child that ran this long before dying starts again at the first delay
STOP_GRACE_SECONDS = 60.0  # after SIGTERM: the children's drain budget, then SIGKILL


def _how(code: int) -> str:
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"


class Supervisor:
    """Runs the children, restarts one that dies (backoff 1 s doubling to 30 s, reset after 60 s of
    running) and says which died and how; on SIGTERM/SIGINT stops restarting, forwards the signal
    and waits for every child to drain (SIGKILL after `STOP_GRACE_SECONDS`)."""

    def __init__(self, commands: dict[str, list[str]], envs: dict[str, dict[str, str]]) -> None:
        self.commands, self.envs = commands, envs
        self.children: dict[str, asyncio.subprocess.Process] = {}
        self.stopping = asyncio.Event()
        self.codes: dict[str, int] = {}

    def say(self, message: str) -> None:
        print(f"foundry-mesh: {message}", file=sys.stderr, flush=True)

    async def _keep(self, name: str) -> None:
        delay = RESTART_DELAY_SECONDS
        while True:
            started = time.monotonic()
            child = await asyncio.create_subprocess_exec(*self.commands[name], env=self.envs[name])
            self.children[name] = child
            code = await child.wait()
            self.codes[name] = code
            if self.stopping.is_set():
                return
            ran = time.monotonic() - started
            delay = RESTART_DELAY_SECONDS if ran >= STABLE_SECONDS else delay
            self.say(f"{name} (pid {child.pid}) {_how(code)} after {ran:.1f} s; restarting in {delay:g} s")
            try:
                await asyncio.wait_for(self.stopping.wait(), delay)
                return
            except TimeoutError:
                pass
            delay = min(delay * 2, RESTART_DELAY_MAX_SECONDS)

    def stop(self, signum: int) -> None:
        if not self.stopping.is_set():
            self.say(f"{signal.Signals(signum).name}: stopping every process (each drains first)")
        self.stopping.set()
        for child in self.children.values():
            if child.returncode is None:
                child.send_signal(signum)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop, sig)
        keepers = [asyncio.create_task(self._keep(name)) for name in self.commands]
        await self.stopping.wait()
        # Not wait_for(gather(...)): on timeout it waits for the cancelled keepers without bound, so a
        # swallowed cancel would hang the stop before the SIGKILL.
        _, running = await asyncio.wait(keepers, timeout=STOP_GRACE_SECONDS)
        if not running:
            await asyncio.gather(*keepers)  # all ended: a keeper's error propagates, as before
        else:
            stuck = await cancel_and_wait(keepers)  # cancelled before the SIGKILL, as before
            for name, child in self.children.items():
                if child.returncode is None:
                    self.say(
                        f"{name} (pid {child.pid}) did not stop within {STOP_GRACE_SECONDS:g} s: SIGKILL"
                    )
                    child.kill()
            if stuck:
                self.say(f"tasks ignored their cancel, left running: {where_tasks_wait(stuck)}")
        return max((c for c in self.codes.values() if c > 0), default=0)


def main() -> int:
    env = dict(os.environ)
    env.setdefault("FOUNDRY_DATABASE_URL", DEFAULT_DB)
    env.setdefault("FOUNDRY_AMQP_URL", DEFAULT_AMQP)
    env.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")  # see services.platform.process._uvloop_is_safe
    asyncio.run(ensure_database(env["FOUNDRY_DATABASE_URL"]))
    base_admin = int(env.get("FOUNDRY_METRICS_PORT", "9464"))
    names = [*SERVICE_NAMES, "gateway"]
    commands = {n: [sys.executable, "-m", "gateway" if n == "gateway" else f"services.{n}"] for n in names}
    envs = {n: {**env, "FOUNDRY_METRICS_PORT": str(base_admin + i)} for i, n in enumerate(names)}
    return asyncio.run(Supervisor(commands, envs).run())


if __name__ == "__main__":
    sys.exit(main())
