"""`make run` (embedded) and `make run-mesh` (process per service on PostgreSQL + RabbitMQ) come up
healthy and drain cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.helpers.eventually import assert_eventually
from tests.helpers.infra import make_pg_database, unique_name
from tests.helpers.procs import ROOT, MeshPorts, health_status, spawn, stop, wait_healthy

pytestmark = pytest.mark.e2e

GRPC_SERVICES = {
    "organization": "foundry.organization.v1.OrganizationService",
    "task": "foundry.task.v1.TaskService",
    "github_data": "foundry.github_data.v1.GithubDataService",
    "sandbox": "foundry.sandbox.v1.SandboxService",
}


async def _reflected_services(port: int) -> set[str]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for response in reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([request]), timeout=5
        ):
            return {s.name for s in response.list_services_response.service}
    return set()


def _events(log: Path) -> list[dict[str, object]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


async def test_embedded_mode_serves_all_services_and_drains(tmp_path: Path) -> None:
    ports = MeshPorts()
    log = tmp_path / "embedded.log"
    proc = spawn(
        "services.embedded", {**ports.env(), "FOUNDRY_DATA_DIR": str(tmp_path / "data")}, log_path=log
    )
    try:
        await wait_healthy(ports, proc)
        for name, port in ports.services.items():  # overall and per-service health, reflection
            for health_service in ("", GRPC_SERVICES[name]):
                assert await health_status(port, health_service) == health_pb2.HealthCheckResponse.SERVING
            assert GRPC_SERVICES[name] in await _reflected_services(port)
        assert sorted(p.name for p in (tmp_path / "data").glob("*.sqlite3")) == [
            "github_data.sqlite3",
            "organization.sqlite3",
            "sandbox.sqlite3",
            "task.sqlite3",
        ]
    finally:
        code = stop(proc)
    assert code == 0, log.read_text()[-3000:]
    printed = log.read_text(errors="replace")
    for name, port in {**ports.services, "gateway": ports.gateway}.items():  # where each one listens
        assert f"foundry: {name:<12} listening on 127.0.0.1:{port}" in printed
    names = [e.get("event") for e in _events(log)]
    for step in ("drain_started", "drain_finished", "cleanup_started", "cleanup_finished"):
        assert step in names, f"{step} missing from the drain log"
    assert names.index("drain_started") < names.index("drain_finished") < names.index("cleanup_finished")


def _children(parent: int, module: str) -> list[int]:
    """Pids of `parent`'s children started as `python -m <module>`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if (
                entry.name.isdigit()
                and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent
            ):
                if module in (entry / "cmdline").read_bytes().decode(errors="replace").split("\0"):
                    found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _restarted(parent: int, old: int) -> None:
    pids = _children(parent, "services.task")
    assert pids and old not in pids, pids


@pytest.mark.integration
async def test_mesh_mode_runs_one_process_per_service_on_postgres_and_rabbitmq(
    tmp_path: Path, amqp_url: str
) -> None:
    ports = MeshPorts()
    async with make_pg_database() as db_url:
        env = {
            **ports.env(),
            "FOUNDRY_DATABASE_URL": db_url,
            "FOUNDRY_AMQP_URL": amqp_url,  # the run's own node; the prefix keeps this mesh's queues apart
            "FOUNDRY_NAME_PREFIX": unique_name("mesh"),
            "FOUNDRY_DATA_DIR": str(tmp_path / "data"),
        }
        proc = spawn("services.mesh", env, log_path=tmp_path / "mesh.log")
        try:
            await wait_healthy(ports, proc, timeout=90)
            # A process manager's job: a SIGKILLed service is restarted, and the log says so.
            (task_pid,) = _children(proc.pid, "services.task")
            os.kill(task_pid, signal.SIGKILL)
            await assert_eventually(lambda: _restarted(proc.pid, task_pid), timeout=30)
            await wait_healthy(ports, proc, timeout=60)
        finally:
            code = stop(proc)
        log = (tmp_path / "mesh.log").read_text(errors="replace")
        assert code == 0, log[-3000:]
        assert f"task (pid {task_pid}) killed by SIGKILL" in log and "restarting in 1 s" in log, log[-3000:]
        starts = [e for e in _events(tmp_path / "mesh.log") if e.get("event") == "service_started"]
        # Every service once, and the task service again after its SIGKILL.
        assert sorted(str(e["service"]) for e in starts) == [
            "github_data",
            "organization",
            "sandbox",
            "task",
            "task",
        ]
        assert all("postgresql" in str(e["database"]) for e in starts)


def test_a_service_process_without_amqp_url_exits_2_and_says_why(tmp_path: Path) -> None:
    """A service started on its own (PostgreSQL URL set, so not embedded) without FOUNDRY_AMQP_URL
    cannot use in-process messaging: it must refuse to start, before touching the database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDRY_")}
    env |= {
        "GRPC_ENABLE_FORK_SUPPORT": "false",
        # Never reached: a process that tried would fail with another message and code.
        "FOUNDRY_DATABASE_URL": "postgresql+asyncpg://nobody@127.0.0.1:1/none",
        "FOUNDRY_DATA_DIR": str(tmp_path / "data"),
    }
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name in GRPC_SERVICES
    }
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        message = err.decode(errors="replace")
        assert proc.returncode == 2, (name, out[-2000:], message[-2000:])
        assert f"services.{name}: FOUNDRY_AMQP_URL is not set" in message, message
        assert "make run" in message and "FOUNDRY_DATABASE_URL" in message
    assert not (tmp_path / "data").exists()  # nothing was started
