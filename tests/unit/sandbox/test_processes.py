"""Long-running processes in a sandbox: start, logs, list, watch, stop, kill, delete."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import grpc
import pytest
from foundry.common.v1 import watch_pb2
from foundry.sandbox.v1 import process_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as pb
from foundry.sandbox.v1 import sandbox_service_pb2_grpc as pb_grpc

from tests.helpers.eventually import assert_eventually
from tests.unit.sandbox.conftest import prepared_sandbox


async def start(
    stub: pb_grpc.SandboxServiceAsyncStub, sandbox: str, script: str, request_id: str = ""
) -> process_pb2.Process:
    response = await stub.CreateProcess(
        pb.CreateProcessRequest(
            parent=sandbox,
            process=process_pb2.Process(command="/bin/sh", args=["-c", script]),
            request_id=request_id,
        )
    )
    return response.process


async def stop_when_ready(
    stub: pb_grpc.SandboxServiceAsyncStub, name: str
) -> tuple[process_pb2.Process, bytes]:
    """Once the process has printed `ready`, StopProcess (30 s grace); the process once EXITED, and
    its whole output."""

    async def output(expected: bytes) -> bytes:
        logs = await stub.GetProcessLogs(pb.GetProcessLogsRequest(name=name))
        data = b"".join(c.data for c in logs.chunks)
        assert expected in data, data
        return data

    async def exited() -> process_pb2.Process:
        current = (await stub.GetProcess(pb.GetProcessRequest(name=name))).process
        assert current.state == process_pb2.PROCESS_STATE_EXITED
        return current

    await assert_eventually(lambda: output(b"ready"))
    await stub.StopProcess(pb.StopProcessRequest(name=name, grace_period_seconds=30))
    done = await assert_eventually(exited, timeout=20)
    return done, await output(b"ready")


async def test_process_output_is_captured_per_stream_and_readable_from_an_offset(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    sandbox = (await prepared_sandbox(stub, origin)).name
    process = await start(stub, sandbox, "echo out1; echo err1 >&2; cat README.md; exit 3")
    assert process.state == process_pb2.PROCESS_STATE_RUNNING and process.pid > 0

    async def exited() -> process_pb2.Process:
        current = (await stub.GetProcess(pb.GetProcessRequest(name=process.name))).process
        assert current.state == process_pb2.PROCESS_STATE_EXITED
        return current

    done = await assert_eventually(exited)
    assert done.exit_code == 3 and done.exit_signal == 0
    logs = await stub.GetProcessLogs(pb.GetProcessLogsRequest(name=process.name))
    assert logs.complete
    combined = b"".join(c.data for c in logs.chunks)
    assert sorted(combined.splitlines()) == sorted([b"out1", b"err1", b"# demo", b"line two"])
    assert logs.next_offset == len(combined) == done.output_size_bytes
    stderr = await stub.GetProcessLogs(
        pb.GetProcessLogsRequest(name=process.name, stream=process_pb2.PROCESS_OUTPUT_STREAM_STDERR)
    )
    assert b"".join(c.data for c in stderr.chunks) == b"err1\n"
    tail = await stub.GetProcessLogs(pb.GetProcessLogsRequest(name=process.name, offset=logs.next_offset - 3))
    assert b"".join(c.data for c in tail.chunks) == combined[-3:]


async def test_kill_ends_the_whole_process_group_and_delete_removes_it(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    sandbox = (await prepared_sandbox(stub, origin)).name
    marker = str(60000 + os.getpid() % 1000)  # finds the child on the host whatever its pid namespace
    process = await start(stub, sandbox, f"sleep {marker} & echo child $!; wait")

    async def child_pid() -> int:
        logs = await stub.GetProcessLogs(pb.GetProcessLogsRequest(name=process.name))
        data = b"".join(c.data for c in logs.chunks)
        assert data.startswith(b"child ")
        return int(data.split()[1])

    await assert_eventually(child_pid)
    await assert_eventually(lambda: _running(["sleep", marker], 1))  # (forked, then exec'd: not at once)
    with pytest.raises(grpc.aio.AioRpcError) as running:
        await stub.DeleteProcess(pb.DeleteProcessRequest(name=process.name))
    assert running.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    killed = (await stub.KillProcess(pb.KillProcessRequest(name=process.name))).process
    assert killed.state == process_pb2.PROCESS_STATE_EXITED and killed.exit_signal == 9
    assert not killed.HasField("exit_code")
    await assert_eventually(lambda: _gone(["sleep", marker]))
    await stub.DeleteProcess(pb.DeleteProcessRequest(name=process.name))
    listed = await stub.ListProcesses(pb.ListProcessesRequest(parent=sandbox))
    assert list(listed.processes) == []


def _host_pids(argv: list[str]) -> list[int]:
    """Live (not zombie) processes of this host whose command line is `argv`."""
    wanted = "\0".join(argv).encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "cmdline").read_bytes() == wanted and "Z" not in (entry / "stat").read_text().split()[
                2
            ]:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _running(argv: list[str], count: int) -> None:
    assert len(_host_pids(argv)) == count


def _gone(argv: list[str]) -> None:
    assert not _host_pids(argv)


async def test_stop_sends_sigterm_and_create_is_idempotent_by_request_id(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    sandbox = (await prepared_sandbox(stub, origin)).name
    first = await start(stub, sandbox, "sleep 60", request_id="r-1")
    again = await start(stub, sandbox, "sleep 60", request_id="r-1")
    assert again.name == first.name
    stopping = (
        await stub.StopProcess(pb.StopProcessRequest(name=first.name, grace_period_seconds=5))
    ).process
    assert stopping.state in (process_pb2.PROCESS_STATE_STOPPING, process_pb2.PROCESS_STATE_EXITED)

    async def exited() -> process_pb2.Process:
        current = (await stub.GetProcess(pb.GetProcessRequest(name=first.name))).process
        assert current.state == process_pb2.PROCESS_STATE_EXITED
        return current

    try:
        done = await assert_eventually(exited, timeout=20)
    except AssertionError:
        # Seen twice in CI under heavy load, never alone: which processes were left (a pipe holder?).
        ps = await asyncio.create_subprocess_exec(
            "ps", "-eo", "pid,ppid,pgid,sid,stat,etimes,args", "--forest", stdout=asyncio.subprocess.PIPE
        )
        tree, _ = await ps.communicate()
        print(f"process {first.name} (pid {first.pid}) still not EXITED; processes:\n{tree.decode()}")
        raise
    # Ended by the stop's SIGTERM, not by the SIGKILL after the grace. (Under bubblewrap the command
    # gets it below the sandbox's pid 1, and bwrap reports its end as its own signal or exit status.)
    assert done.exit_signal != 9 and (done.exit_signal == 15 or done.HasField("exit_code")), done


@pytest.mark.parametrize("tty", [False, True], ids=["pipes", "terminal"])
async def test_stop_lets_the_command_handle_sigterm_and_shut_down(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path, tty: bool
) -> None:
    """The command itself gets the SIGTERM (under bubblewrap too, where it runs below the sandbox's
    pid 1, a terminal's command in a session of its own) and exits on its own terms within the grace
    period: no SIGKILL."""
    sandbox = (await prepared_sandbox(stub, origin)).name
    script = "trap 'echo cleaned up; exit 7' TERM; echo ready; while :; do sleep 0.1; done"
    process = (
        await stub.CreateProcess(
            pb.CreateProcessRequest(
                parent=sandbox, process=process_pb2.Process(command="/bin/sh", args=["-c", script], tty=tty)
            )
        )
    ).process

    done, output = await stop_when_ready(stub, process.name)
    assert (done.exit_code, done.exit_signal) == (7, 0), done
    assert output.rstrip().endswith(b"cleaned up"), output


async def test_a_process_stopped_as_it_starts_leaves_nothing_running(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    """StopProcess right after CreateProcess lands while a bubblewrap sandbox is still being set up:
    the process still ends (EXITED) and nothing of it is left on the host. (SIGTERM sent to bwrap in
    that window left the sandbox's pid 1 running under init, holding the output pipes: STOPPING for
    good.)"""
    sandbox = (await prepared_sandbox(stub, origin)).name
    marker = str(61000 + os.getpid() % 1000)
    names = []
    for _ in range(12):
        process = await start(stub, sandbox, f"sleep {marker}")
        await stub.StopProcess(pb.StopProcessRequest(name=process.name, grace_period_seconds=30))
        names.append(process.name)

    async def all_exited() -> None:
        for name in names:
            current = (await stub.GetProcess(pb.GetProcessRequest(name=name))).process
            assert current.state == process_pb2.PROCESS_STATE_EXITED, current

    await assert_eventually(all_exited, timeout=20)
    await assert_eventually(lambda: _gone(["sleep", marker]))


async def test_watch_processes_streams_the_list_then_changes(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    sandbox = (await prepared_sandbox(stub, origin)).name
    first = await start(stub, sandbox, "exit 0")
    call = stub.WatchProcesses(pb.WatchProcessesRequest(parent=sandbox))
    stream = call.__aiter__()
    seen: dict[str, int] = {}
    deleted: list[str] = []

    async def read_until(predicate: Any) -> None:
        while not predicate():
            event = (await asyncio.wait_for(stream.__anext__(), 10)).event
            for item in event.items:
                if event.kind == watch_pb2.WATCH_EVENT_KIND_DELETE:
                    deleted.append(item.name)
                    continue
                process = process_pb2.Process()
                item.resource.Unpack(process)
                seen[process.name] = process.state

    await read_until(lambda: seen.get(first.name) == process_pb2.PROCESS_STATE_EXITED)
    second = await start(stub, sandbox, "exit 0")
    await read_until(lambda: seen.get(second.name) == process_pb2.PROCESS_STATE_EXITED)
    await stub.DeleteProcess(pb.DeleteProcessRequest(name=first.name))
    await read_until(lambda: deleted == [first.name])
    call.cancel()


async def test_a_missing_command_is_a_readable_failed_precondition(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    sandbox = (await prepared_sandbox(stub, origin)).name
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateProcess(
            pb.CreateProcessRequest(
                parent=sandbox, process=process_pb2.Process(command="no-such-binary-here")
            )
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no-such-binary-here" in (caught.value.details() or "")


async def test_destroying_the_sandbox_kills_its_processes(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    sandbox = (await prepared_sandbox(stub, origin)).name
    marker = str(63000 + os.getpid() % 1000)
    await start(stub, sandbox, f"sleep {marker} & sleep {marker}")
    await assert_eventually(lambda: _running(["sleep", marker], 2))
    await stub.DestroySandbox(pb.DestroySandboxRequest(name=sandbox, reason="task killed"))
    await assert_eventually(lambda: _gone(["sleep", marker]))
    listed = await stub.ListProcesses(pb.ListProcessesRequest(parent=sandbox))
    assert list(listed.processes) == []
