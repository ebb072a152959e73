"""Replicas of mesh services as separate OS processes on one PostgreSQL database and one RabbitMQ
vhost, the way Kubernetes runs them: each replica has its own gRPC and admin port, peers are reached
through a multi-address target (`ipv4:127.0.0.1:p1,127.0.0.1:p2`, round-robin), and a replica can
be drained (SIGTERM), restarted on the same ports, and its JSON log read back.

Used by tests/e2e/test_drain*.py and tests/e2e/test_rolling_restart.py:

    async with make_pg_database() as db_url:
        cluster = Cluster(tmp_path, db_url, amqp_url, replicas={"organization": 2, "task": 2, ...})
        try:
            await cluster.start()          # first replicas (they migrate), then the others
            stub = TaskServiceStub(cluster.channel("task", caller))   # round-robin over both
            code = await cluster.restart("task-0")                   # drain, exit code, start again
        finally:
            await cluster.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health_pb2

from services.platform.channels import open_channel
from services.platform.identity import Caller
from services.platform.settings import SERVICE_NAMES, Settings
from tests.helpers.infra import free_port, unique_name
from tests.helpers.procs import ROOT, health_status

SERVING: int = health_pb2.HealthCheckResponse.SERVING
# Production defaults (quorum queues, 30 s grace) except: JSON logs the tests read back, and short
# queue retry delays (with more attempts) so retried work finishes within a test's time budget.
BASE_ENV = {
    "FOUNDRY_LOG_FORMAT": "json",
    "FOUNDRY_MESSAGING__QUEUE_TYPE": "quorum",  # the suite's default is classic (tests/conftest.py)
    "FOUNDRY_MESSAGING__RETRY_DELAY_SECONDS": "0.2",
    "FOUNDRY_MESSAGING__RETRY_DELAY_MAX_SECONDS": "1",
    "FOUNDRY_MESSAGING__MAX_ATTEMPTS": "20",
    "FOUNDRY_MESSAGING__OUTBOX_SWEEP_SECONDS": "1",
}


@dataclass
class Replica:
    """One process: `python -m <module>` with its own ports and log file."""

    service: str  # a service name, or "gateway"
    index: int
    module: str
    port: int
    admin: int
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def label(self) -> str:
        return f"{self.service}-{self.index}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Spawn the process (a restart appends to the same log)."""
        assert self.proc is None or self.proc.poll() is not None, f"{self.label} is running"
        self.starts += 1
        with self.log.open("ab") as f:
            # A leading newline: a kill -9 can cut the previous run's last line short, and a marker
            # appended to it would not parse (every later line would count as the earlier run's).
            f.write(f'\n{{"event": "e2e_spawn", "start": {self.starts}}}\n'.encode())
        full_env = {**os.environ, "GRPC_VERBOSITY": "ERROR", **self.env}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module],
                cwd=ROOT,
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def terminate(self) -> None:
        """Send SIGTERM (the drain starts); does not wait."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    async def wait_exit(self, timeout: float = 60.0) -> int:
        """Wait for the process to exit; SIGKILL and fail after `timeout` seconds."""
        assert self.proc is not None
        proc = self.proc
        try:
            return await asyncio.to_thread(proc.wait, timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            message = f"{self.label} still running {timeout}s after SIGTERM"
            raise AssertionError(f"{message}\n{self.tail()}") from None

    async def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait for the exit code."""
        self.terminate()
        return await self.wait_exit(timeout)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Until readiness is SERVING (services) or /readyz is 200 (gateway)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise AssertionError(f"{self.label} exited early\n{self.tail()}")
            with contextlib.suppress(grpc.aio.AioRpcError, httpx.HTTPError):
                if await self.is_ready():
                    return
            if loop.time() > deadline:
                raise AssertionError(f"{self.label} not ready after {timeout}s\n{self.tail()}")
            await asyncio.sleep(0.1)

    async def is_ready(self) -> bool:
        if self.service == "gateway":
            async with httpx.AsyncClient() as client:
                return (await client.get(f"http://{self.address}/readyz", timeout=2)).status_code == 200
        return await health_status(self.port, "readiness") == SERVING

    async def metrics(self) -> str:
        """The admin port's Prometheus exposition text."""
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{self.admin}/metrics", timeout=5)
        response.raise_for_status()
        return response.text

    def events(self, start: int | None = None) -> list[dict[str, Any]]:
        """The JSON log lines of this replica (of its `start`-th run only, when given)."""
        out: list[dict[str, Any]] = []
        run = 0
        for line in self.log.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("event") == "e2e_spawn":
                run = int(event["start"])
                continue
            if start is None or run == start:
                out.append(event)
        return out

    def tail(self, chars: int = 4000) -> str:
        return f"--- {self.label} log tail ---\n" + self.log.read_text(errors="replace")[-chars:]


@dataclass
class Cluster:
    """Replicas of services (and optionally the gateway) sharing one database and vhost.

    Args:
        root: a temporary directory (logs, data dir shared by the replicas like a volume).
        database_url / amqp_url: the shared PostgreSQL database and RabbitMQ vhost.
        replicas: how many processes per service (0 or absent: not started).
        env: extra environment for every process; `service_env` per service or per label
            (`task-1`) on top of it; `modules` overrides the module a service runs.
        gateway: also start one gateway process.
    """

    root: Path
    database_url: str
    amqp_url: str
    replicas: Mapping[str, int]
    env: Mapping[str, str] = field(default_factory=dict)
    service_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    modules: Mapping[str, str] = field(default_factory=dict)
    gateway: bool = False
    prefix: str = field(default_factory=lambda: unique_name("drain"))
    members: dict[str, list[Replica]] = field(default_factory=dict)
    _channels: list[grpc.aio.Channel] = field(default_factory=list)

    def __post_init__(self) -> None:
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        for service, count in self.replicas.items():
            self.members[service] = [self._replica(service, i, free_port()) for i in range(count)]
        if self.gateway:
            self.members["gateway"] = [self._replica("gateway", 0, free_port())]

    def _replica(self, service: str, index: int, port: int) -> Replica:
        label = f"{service}-{index}"
        module = self.modules.get(service, "gateway" if service == "gateway" else f"services.{service}")
        return Replica(service, index, module, port, free_port(), {}, self.root / "logs" / f"{label}.log")

    def _env_of(self, replica: Replica) -> dict[str, str]:
        env = {
            **BASE_ENV,
            "FOUNDRY_DATABASE_URL": self.database_url,
            "FOUNDRY_AMQP_URL": self.amqp_url,
            "FOUNDRY_NAME_PREFIX": self.prefix,
            "FOUNDRY_DATA_DIR": str(self.root / "data"),
            "FOUNDRY_METRICS_PORT": str(replica.admin),
            "FOUNDRY_GATEWAY__PUBLIC_URL": f"http://127.0.0.1:{replica.port}",
            **{f"FOUNDRY_{s.upper()}_TARGET": self.target(s) for s in SERVICE_NAMES if self.members.get(s)},
            f"FOUNDRY_{replica.service.upper()}_PORT": str(replica.port),
            **self._placement(replica),
            **self.env,
            **self.service_env.get(replica.service, {}),
            **self.service_env.get(replica.label, {}),
        }
        return env

    def _placement(self, replica: Replica) -> dict[str, str]:
        """Sandbox replicas, when several run, as a StatefulSet runs them: each owns the sandboxes it
        creates, at its own address, with its files on a volume of its own."""
        if replica.service != "sandbox" or len(self.members["sandbox"]) < 2:
            return {}
        return {
            "FOUNDRY_SANDBOX__REPLICA_ADDRESS": replica.address,
            "FOUNDRY_SANDBOX__ROOT": str(self.root / "data" / f"sandboxes-{replica.index}"),
        }

    def target(self, service: str) -> str:
        """The round-robin gRPC target of every replica of `service`."""
        return "ipv4:" + ",".join(r.address for r in self.members[service])

    def all(self) -> list[Replica]:
        return [r for group in self.members.values() for r in group]

    def __getitem__(self, label: str) -> Replica:
        service, _, index = label.rpartition("-")
        return self.members[service][int(index)]

    async def start(self, timeout: float = 90.0) -> None:
        """Start every replica: first ones first (they run migrations), then the others."""
        for replica in self.all():
            replica.env = self._env_of(replica)
        waves: Sequence[list[Replica]] = (
            [g[0] for s, g in self.members.items() if s != "gateway"],
            [r for s, g in self.members.items() if s != "gateway" for r in g[1:]],
            self.members.get("gateway", []),
        )
        for wave in waves:
            for replica in wave:
                replica.start()
            await asyncio.gather(*(r.wait_ready(timeout) for r in wave))
            # The schema is in place: later starts skip Alembic, as pods do after the migration Job.
            for replica in self.all():
                replica.env["FOUNDRY_MIGRATE_ON_START"] = "false"

    async def restart(self, label: str, *, drain_timeout: float = 60.0) -> int:
        """SIGTERM one replica, wait for its exit, start it again on the same ports and wait until
        ready. Returns the drained run's exit code."""
        replica = self[label]
        code = await replica.stop(drain_timeout)
        replica.start()
        await replica.wait_ready()
        return code

    async def ensure_running(self) -> None:
        """Start again every replica a test left stopped, and wait until all are ready."""
        stopped = [r for r in self.all() if not r.running]
        for replica in stopped:
            replica.start()
        await asyncio.gather(*(r.wait_ready() for r in stopped))

    def settings(self) -> Settings:
        """Settings matching the processes' internal auth secret (for signing test callers)."""
        return Settings()

    def channel(self, service: str, caller: Caller, *, timeout: float = 30.0) -> grpc.aio.Channel:
        """A round-robin channel over every replica of `service`, speaking as `caller`, with the mesh's
        retry policy (UNAVAILABLE retried). Closed by `close()`."""
        channel = open_channel(self.target(service), self.settings(), caller, timeout=timeout)
        self._channels.append(channel)
        return channel

    def direct(self, label: str, caller: Caller, *, timeout: float = 30.0) -> grpc.aio.Channel:
        """A channel to one replica only."""
        channel = open_channel(self[label].address, self.settings(), caller, timeout=timeout)
        self._channels.append(channel)
        return channel

    async def close(self) -> None:
        """Close the test's channels and stop every replica still running (SIGTERM, then SIGKILL)."""
        for channel in self._channels:
            await channel.close()
        self._channels.clear()
        for replica in self.all():
            replica.terminate() if replica.running else None
        for replica in self.all():
            if replica.proc is not None:
                with contextlib.suppress(AssertionError):
                    await replica.wait_exit(30)

    def dump_logs(self) -> str:
        """Every replica's log tail, for assertion messages."""
        return "\n".join(r.tail(2500) for r in self.all())


def metric(exposition: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0.0 when there is none)."""
    total = 0.0
    for line in exposition.splitlines():
        series, _, value = line.rpartition(" ")
        if series == name or series.startswith(name + "{"):
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
    return total
