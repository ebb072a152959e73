"""kill -9 of the sandbox service on the unconfined `local` provider (issue #16): the commands it had
started outlive it (their own sessions, reparented to init), so its next start on the same sandbox
root kills what its earlier life left, grandchildren included, before serving. (Bubblewrap-confined
commands die with their parent: `--die-with-parent` in a pid namespace of their own.)"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import grpc
import pytest
from foundry.sandbox.v1 import process_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as pb
from foundry.sandbox.v1 import sandbox_service_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2

from services.platform.channels import open_channel
from services.platform.identity import Caller
from services.platform.settings import Settings
from services.sandbox.providers.local import LocalProvider
from tests.helpers import assert_eventually, free_port, unique_name
from tests.helpers.procs import health_status, spawn, stop
from tests.unit.sandbox.conftest import prepared_sandbox
from tests.unit.sandbox.gitrepo import make_origin

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def _alive_with(marker: str) -> list[int]:
    """Pids of live (not zombie) processes whose command line holds `marker`."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = Path(f"/proc/{name}/stat").read_text()
            if marker in cmdline and stat[stat.rindex(")") + 2] != "Z":
                found.append(int(name))
    return found


async def test_commands_left_by_a_killed_sandbox_service_are_killed_at_its_next_start(
    tmp_path: Path, amqp_url: str
) -> None:
    port = free_port()
    env = {
        "FOUNDRY_AMQP_URL": amqp_url,
        "FOUNDRY_NAME_PREFIX": unique_name("leftovers"),
        "FOUNDRY_DATA_DIR": str(tmp_path / "data"),
        "FOUNDRY_SANDBOX__PROVIDER": "local",
        "FOUNDRY_SANDBOX_PORT": str(port),
        "FOUNDRY_METRICS_PORT": "0",
        "FOUNDRY_LOG_FORMAT": "json",
    }
    logs = [tmp_path / "sandbox-1.log"]
    procs = [spawn("services.sandbox", env, log_path=logs[0])]
    marker = f"{3000 + os.getpid() % 1000}.{time.monotonic_ns() % 1000}"  # sleep's argument: unique

    async def ready() -> None:
        if procs[-1].poll() is not None:  # not an AssertionError: stop waiting at once
            raise RuntimeError(logs[-1].read_text()[-3000:])
        try:
            status = await health_status(port, "readiness")
        except grpc.aio.AioRpcError as exc:  # not listening yet
            raise AssertionError(exc.details()) from None
        assert status == health_pb2.HealthCheckResponse.SERVING

    channel = open_channel(f"127.0.0.1:{port}", Settings(), Caller.service("task"), timeout=30)
    try:
        await assert_eventually(ready, timeout=60, interval=0.2)
        stub = pb_grpc.SandboxServiceStub(channel)
        sandbox = (await prepared_sandbox(stub, make_origin(tmp_path))).name
        script = f"sleep {marker} & sleep {marker}; wait"  # the shell (a child), two grandchildren
        await stub.CreateProcess(
            pb.CreateProcessRequest(
                parent=sandbox, process=process_pb2.Process(command="/bin/sh", args=["-c", script])
            )
        )

        async def both_sleeping() -> list[int]:
            pids = _alive_with(f"sleep {marker}")
            assert len(pids) == 3, pids  # the shell and its two sleeps
            return pids

        sleeping = await assert_eventually(both_sleeping, timeout=20, interval=0.1)

        procs[-1].kill()  # SIGKILL: no drain, nothing stops the commands
        await asyncio.to_thread(procs[-1].wait, 10)
        await asyncio.sleep(0.5)
        assert sorted(_alive_with(f"sleep {marker}")) == sorted(sleeping), "they outlive the service"

        logs.append(tmp_path / "sandbox-2.log")
        procs.append(spawn("services.sandbox", env, log_path=logs[-1]))
        began = time.monotonic()
        await assert_eventually(ready, timeout=60, interval=0.2)
        assert _alive_with(f"sleep {marker}") == [], "left running by the restarted service"
        print(f"\nrestart -> ready with the leftovers killed: {time.monotonic() - began:.1f} s")
        assert "sandbox_leftover_processes_killed" in logs[-1].read_text()
    except BaseException:
        print("\n".join(log.read_text(errors="replace")[-3000:] for log in logs))
        raise
    finally:
        await channel.close()
        for proc in procs:
            stop(proc)
        for pid in _alive_with(f"sleep {marker}"):  # never leave them behind, whatever happened
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_the_lifeline_of_a_sandbox_root_is_stable_and_its_own(tmp_path: Path) -> None:
    one = LocalProvider(tmp_path / "a", base_env={}).lifeline
    assert one == LocalProvider(tmp_path / "a", base_env={}).lifeline
    assert one != LocalProvider(tmp_path / "b", base_env={}).lifeline
