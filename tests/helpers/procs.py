"""Start mesh processes for end-to-end tests and wait for them to become healthy."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.platform.settings import SERVICE_NAMES
from tests.helpers.infra import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class MeshPorts:
    services: dict[str, int] = field(default_factory=lambda: {name: free_port() for name in SERVICE_NAMES})
    gateway: int = field(default_factory=free_port)
    admin: int = field(default_factory=free_port)

    def env(self) -> dict[str, str]:
        env = {f"FOUNDRY_{name.upper()}_PORT": str(port) for name, port in self.services.items()}
        env["FOUNDRY_GATEWAY_PORT"] = str(self.gateway)
        env["FOUNDRY_METRICS_PORT"] = str(self.admin)
        return env


def spawn(module: str, env: Mapping[str, str], *, log_path: Path) -> subprocess.Popen[bytes]:
    """Start `python -m module` with `env` on top of ours; stdout+stderr go to `log_path`."""
    full_env = {**os.environ, "GRPC_VERBOSITY": "ERROR", "GRPC_ENABLE_FORK_SUPPORT": "false", **env}
    log = log_path.open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", module], cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT
    )


async def health_status(port: int, service: str = "") -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        return int(response.status)


async def wait_healthy(
    ports: MeshPorts, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60
) -> None:
    """Wait until every service answers readiness SERVING and the gateway's /readyz says 200."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = set(ports.services)
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited early with code {proc.returncode}")
        for name in list(pending):
            try:
                if (
                    await health_status(ports.services[name], "readiness")
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    pending.discard(name)
            except grpc.aio.AioRpcError:
                pass
        gateway_ok = False
        try:
            async with httpx.AsyncClient() as client:
                gateway_ok = (await client.get(f"http://127.0.0.1:{ports.gateway}/readyz")).status_code == 200
        except httpx.HTTPError:
            pass
        if not pending and gateway_ok:
            return
        if loop.time() > deadline:
            raise TimeoutError(
                f"not healthy after {timeout}s: services {sorted(pending)}, gateway ok={gateway_ok}"
            )
        await asyncio.sleep(0.2)


def stop(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    """SIGTERM and wait; SIGKILL if it does not exit in `timeout` seconds. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
