"""Terminals: a tty process of the sandbox service (a shell on a pseudo-terminal), its live output
(WatchProcessOutput), input (WriteProcessInput) and size (ResizeProcess), over real gRPC; who may use
one; and that a terminal is confined like the agent (bubblewrap)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from foundry.common.v1 import watch_pb2
from foundry.organization.v1 import organization_service_pb2 as org_pb2
from foundry.organization.v1 import organization_service_pb2_grpc as org_grpc
from foundry.sandbox.v1 import process_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as pb
from foundry.sandbox.v1 import sandbox_service_pb2_grpc as pb_grpc

from services.platform.identity import Caller
from services.platform.settings import SandboxSettings, Settings
from services.sandbox.providers.bubblewrap import available
from tests.helpers.eventually import assert_eventually
from tests.helpers.mesh import Mesh, running
from tests.unit.sandbox.conftest import prepared_sandbox, sandbox_stub

CANARY = "canary-terminal-5d1e-not-for-sandboxes"


class Screen:
    """What a terminal printed, as WatchProcessOutput delivers it (deduplicated by offset)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.changed = asyncio.Event()

    def apply(self, event: watch_pb2.WatchEvent) -> None:
        for item in event.items:
            chunk = process_pb2.ProcessLogChunk()
            assert item.resource.Unpack(chunk)
            skip = len(self.data) - chunk.offset
            if skip < len(chunk.data):
                self.data += chunk.data[max(0, skip) :]
        self.changed.set()

    @property
    def text(self) -> str:
        text = self.data.decode(errors="replace").replace("\r", "")
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)  # no terminal modes (bracketed paste)

    async def until(self, pattern: str, timeout: float = 10) -> re.Match[str]:
        async def seen() -> re.Match[str]:
            found = re.search(pattern, self.text)
            assert found, f"{pattern!r} not in {self.text[-600:]!r}"
            return found

        return await assert_eventually(seen, timeout=timeout)


@contextlib.asynccontextmanager
async def watching(stub: pb_grpc.SandboxServiceAsyncStub, process: str) -> AsyncIterator[Screen]:
    screen = Screen()
    call = stub.WatchProcessOutput(pb.WatchProcessOutputRequest(name=process))

    async def read() -> None:
        async for response in call:
            screen.apply(response.event)

    reader = asyncio.create_task(read())
    try:
        yield screen
    finally:
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await reader


async def sign_in(mesh: Mesh, login: str, *, root: Path | None = None, org_id: str = "") -> Caller:
    """Sign `login` in offline and, given `root`, connect organization `org_id` on it (a member then)."""
    org = org_grpc.OrganizationServiceStub(mesh.channel("organization", Caller.service("gateway")))
    user = (await org.SignInLocal(org_pb2.SignInLocalRequest(login=login))).user
    caller = Caller(subject=f"user/{user.name.removeprefix('users/')}", login=login)
    if root is not None:
        as_user = org_grpc.OrganizationServiceStub(mesh.channel("organization", caller))
        await as_user.ConnectLocalOrganization(
            org_pb2.ConnectLocalOrganizationRequest(
                organization_id=org_id, root_path=str(root), request_id=str(uuid.uuid4())
            )
        )
    return caller


async def open_terminal(
    stub: pb_grpc.SandboxServiceAsyncStub, sandbox: str, rows: int = 24, columns: int = 80
) -> process_pb2.Process:
    response = await stub.CreateProcess(
        pb.CreateProcessRequest(
            parent=sandbox,
            process=process_pb2.Process(command="bash", args=["--norc", "-i"], tty=True),
            request_id=str(uuid.uuid4()),
            terminal_size=process_pb2.TerminalSize(rows=rows, columns=columns),
        )
    )
    return response.process


async def type_(stub: pb_grpc.SandboxServiceAsyncStub, process: str, text: str) -> None:
    await stub.WriteProcessInput(pb.WriteProcessInputRequest(name=process, data=text.encode()))


async def _code(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_a_terminal_is_a_shell_on_a_tty_with_input_resize_and_exit(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    sandbox = (await prepared_sandbox(stub, origin)).name
    terminal = await open_terminal(stub, sandbox, rows=30, columns=100)
    assert terminal.tty and terminal.state == process_pb2.PROCESS_STATE_RUNNING
    async with watching(stub, terminal.name) as screen:
        await type_(
            stub,
            terminal.name,
            "tty; stty size; [ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo all-ttys; echo hi-$((6*7))\n",
        )
        # bubblewrap binds the terminal it was given at /dev/console (its /dev/pts is its own).
        await screen.until(r"/dev/(pts/\d+|console)\n")
        await screen.until(r"30 100\n")
        await screen.until(r"all-ttys\n")  # stdin, stdout and stderr are the terminal
        await screen.until(r"hi-42\n")
        resized = await stub.ResizeProcess(
            pb.ResizeProcessRequest(
                name=terminal.name, terminal_size=process_pb2.TerminalSize(rows=40, columns=132)
            )
        )
        assert resized.process.state == process_pb2.PROCESS_STATE_RUNNING
        await type_(stub, terminal.name, "stty size\n")
        await screen.until(r"40 132\n")
        # Ctrl-C reaches the foreground job (the shell owns the terminal: job control works).
        # The job prints zz-2 (its typed echo shows zz-$((1+1))) just before it becomes `sleep`.
        await type_(stub, terminal.name, "bash -c 'echo zz-$((1+1)); exec sleep 30'\n")
        await screen.until(r"zz-2")
        await type_(stub, terminal.name, "\x03echo after-$?\n")
        await screen.until(r"after-130", timeout=15)
        await type_(stub, terminal.name, "exit 7\n")

        async def exited() -> process_pb2.Process:
            current = (await stub.GetProcess(pb.GetProcessRequest(name=terminal.name))).process
            assert current.state == process_pb2.PROCESS_STATE_EXITED
            return current

        done = await assert_eventually(exited)
    assert done.exit_code == 7
    # The same output is in the process's log, durably.
    logs = await stub.GetProcessLogs(pb.GetProcessLogsRequest(name=terminal.name))
    assert b"hi-42" in b"".join(c.data for c in logs.chunks) and logs.complete
    # A new watcher of an exited terminal gets its output's tail as the snapshot.
    async with watching(stub, terminal.name) as again:
        await again.until(r"hi-42")
    write = stub.WriteProcessInput(pb.WriteProcessInputRequest(name=terminal.name, data=b"x"))
    assert await _code(write) == grpc.StatusCode.FAILED_PRECONDITION
    resize = stub.ResizeProcess(
        pb.ResizeProcessRequest(name=terminal.name, terminal_size=process_pb2.TerminalSize(rows=5, columns=5))
    )
    assert await _code(resize) == grpc.StatusCode.FAILED_PRECONDITION


async def test_bad_sizes_input_and_non_terminals_are_refused(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    sandbox = (await prepared_sandbox(stub, origin)).name
    terminal = await open_terminal(stub, sandbox)
    for rows, columns in ((0, 80), (24, 0), (1001, 80), (-1, 5)):
        resize = stub.ResizeProcess(
            pb.ResizeProcessRequest(
                name=terminal.name, terminal_size=process_pb2.TerminalSize(rows=rows, columns=columns)
            )
        )
        assert await _code(resize) == grpc.StatusCode.INVALID_ARGUMENT, (rows, columns)
    too_big = stub.WriteProcessInput(
        pb.WriteProcessInputRequest(name=terminal.name, data=b"x" * (64 * 1024 + 1))
    )
    assert await _code(too_big) == grpc.StatusCode.INVALID_ARGUMENT
    empty = stub.WriteProcessInput(pb.WriteProcessInputRequest(name=terminal.name, data=b""))
    assert await _code(empty) == grpc.StatusCode.INVALID_ARGUMENT
    huge = stub.CreateProcess(
        pb.CreateProcessRequest(
            parent=sandbox,
            process=process_pb2.Process(command="sh", tty=True),
            terminal_size=process_pb2.TerminalSize(rows=5000, columns=80),
        )
    )
    assert await _code(huge) == grpc.StatusCode.INVALID_ARGUMENT
    piped = stub.CreateProcess(
        pb.CreateProcessRequest(parent=sandbox, process=process_pb2.Process(command="cat", interactive=True))
    )
    assert await _code(piped) == grpc.StatusCode.INVALID_ARGUMENT
    missing = stub.CreateProcess(
        pb.CreateProcessRequest(
            parent=sandbox, process=process_pb2.Process(command="no-such-shell", tty=True)
        )
    )
    assert await _code(missing) == grpc.StatusCode.FAILED_PRECONDITION
    plain = (
        await stub.CreateProcess(
            pb.CreateProcessRequest(parent=sandbox, process=process_pb2.Process(command="sleep", args=["30"]))
        )
    ).process
    not_tty = stub.WriteProcessInput(pb.WriteProcessInputRequest(name=plain.name, data=b"x"))
    assert await _code(not_tty) == grpc.StatusCode.FAILED_PRECONDITION
    await stub.KillProcess(pb.KillProcessRequest(name=plain.name))
    killed = (await stub.KillProcess(pb.KillProcessRequest(name=terminal.name))).process
    assert killed.state == process_pb2.PROCESS_STATE_EXITED


async def test_only_members_of_the_organization_reach_a_terminal(
    settings_factory: Callable[..., Settings], origin: Path, tmp_path: Path
) -> None:
    roots = tmp_path / "roots"
    for name in ("alice", "bob"):
        (roots / name).mkdir(parents=True)
    settings = settings_factory(local_roots=[str(roots)])
    async with running(settings, ["organization", "sandbox"]) as mesh:
        alice = await sign_in(mesh, "alice", root=roots / "alice", org_id="acme")
        bob = await sign_in(mesh, "bob", root=roots / "bob", org_id="bobs")  # a member elsewhere only
        mallory = await sign_in(mesh, "mallory")  # a member of nothing
        async with sandbox_stub(mesh) as service:
            sandbox = (await prepared_sandbox(service, origin)).name
        async with sandbox_stub(mesh, alice) as as_alice:
            terminal = await open_terminal(as_alice, sandbox)
            async with watching(as_alice, terminal.name) as screen:
                await type_(as_alice, terminal.name, "echo secret-$((2*21)) > mine.txt; echo done-$((1+1))\n")
                await screen.until(r"done-2")
                for stranger in (bob, mallory):
                    async with sandbox_stub(mesh, stranger) as other:
                        calls = {
                            "write": other.WriteProcessInput(
                                pb.WriteProcessInputRequest(
                                    name=terminal.name, data=b"echo pwned > pwned.txt\n"
                                )
                            ),
                            "resize": other.ResizeProcess(
                                pb.ResizeProcessRequest(
                                    name=terminal.name,
                                    terminal_size=process_pb2.TerminalSize(rows=9, columns=9),
                                )
                            ),
                            "logs": other.GetProcessLogs(pb.GetProcessLogsRequest(name=terminal.name)),
                            "create": other.CreateProcess(
                                pb.CreateProcessRequest(
                                    parent=sandbox, process=process_pb2.Process(command="bash", tty=True)
                                )
                            ),
                        }
                        for what, call in calls.items():
                            assert await _code(call) == grpc.StatusCode.PERMISSION_DENIED, what
                        watch = other.WatchProcessOutput(pb.WatchProcessOutputRequest(name=terminal.name))
                        with pytest.raises(grpc.aio.AioRpcError) as denied:
                            await watch.read()
                        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
                await type_(as_alice, terminal.name, "ls; stty size\n")
                await screen.until(r"24 80\n")  # the strangers' resize never happened
            assert "pwned" not in screen.text
            await as_alice.KillProcess(pb.KillProcessRequest(name=terminal.name))


@pytest.mark.skipif(available() is not None, reason=f"bubblewrap unavailable: {available()}")
async def test_a_terminal_is_confined_like_the_agent(
    settings_factory: Callable[..., Settings], origin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOUNDRY_TEST_CANARY", CANARY)
    settings = settings_factory(sandbox=SandboxSettings(provider="bubblewrap"))
    mesh: Mesh
    async with running(settings, ["sandbox"]) as mesh, sandbox_stub(mesh) as stub:
        mine = await prepared_sandbox(stub, origin, sandbox_id="mine")
        theirs = await prepared_sandbox(stub, origin, sandbox_id="theirs")
        (Path(theirs.checkout.path) / "secret.txt").write_text("their secret\n")
        data_dir = mesh.settings.data_dir.resolve()
        terminal = await open_terminal(stub, mine.name)
        async with watching(stub, terminal.name) as screen:
            await type_(
                stub,
                terminal.name,
                f"id -u; pwd; cat {theirs.checkout.path}/secret.txt; ls {mesh.settings.sandbox_root()}; "
                f"ls {data_dir}; env | grep -c FOUNDRY_; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' "
                f"| grep -c {CANARY}; echo procs=$(ls /proc | grep -c '^[0-9]'); echo end-$((3*3))\n",
            )
            await screen.until(r"end-9\n")
        out = screen.text
        assert "\n1000\n" in out and "\n/workspace\n" in out, out
        assert "their secret" not in out, out
        assert out.count("No such file or directory") >= 3, out
        assert CANARY not in out.replace(f"grep -c {CANARY}", ""), out
        procs = int(re.findall(r"procs=(\d+)", out)[-1])
        assert procs <= 8, out  # bwrap's init, the shell and its pipeline only: nothing of the host
        await stub.KillProcess(pb.KillProcessRequest(name=terminal.name))


async def test_an_unconfined_terminal_is_a_pts_of_the_host(
    settings_factory: Callable[..., Settings], origin: Path
) -> None:
    settings = settings_factory(sandbox=SandboxSettings(provider="local"))
    async with running(settings, ["sandbox"]) as mesh, sandbox_stub(mesh) as stub:
        sandbox = (await prepared_sandbox(stub, origin)).name
        terminal = await open_terminal(stub, sandbox, rows=12, columns=34)
        async with watching(stub, terminal.name) as screen:
            # A background job still holding the terminal does not keep it open past its shell.
            await type_(stub, terminal.name, "tty; stty size; sleep 20 & exit\n")
            await screen.until(r"/dev/pts/\d+\n")
            await screen.until(r"12 34\n")

            async def exited() -> None:
                current = (await stub.GetProcess(pb.GetProcessRequest(name=terminal.name))).process
                assert current.state == process_pb2.PROCESS_STATE_EXITED and current.exit_code == 0

            await assert_eventually(exited, timeout=8)


async def test_a_terminal_does_not_outlive_the_service_process_that_held_it(
    settings_factory: Callable[..., Settings], origin: Path
) -> None:
    settings = settings_factory()
    async with running(settings, ["sandbox"]) as first, sandbox_stub(first) as stub:
        sandbox = (await prepared_sandbox(stub, origin)).name
        terminal = await open_terminal(stub, sandbox)
        async with watching(stub, terminal.name) as screen:
            await type_(stub, terminal.name, "echo before-$((1+2))\n")
            await screen.until(r"before-3\n")
    # A new service process on the same database and disk: the old terminal's master end is gone.
    async with running(settings, ["sandbox"]) as second, sandbox_stub(second) as stub:

        async def exited() -> None:
            current = (await stub.GetProcess(pb.GetProcessRequest(name=terminal.name))).process
            assert current.state == process_pb2.PROCESS_STATE_EXITED, current

        await assert_eventually(exited, timeout=10)
        write = stub.WriteProcessInput(pb.WriteProcessInputRequest(name=terminal.name, data=b"ls\n"))
        assert await _code(write) == grpc.StatusCode.FAILED_PRECONDITION
        logs = await stub.GetProcessLogs(pb.GetProcessLogsRequest(name=terminal.name))
        assert b"before-3" in b"".join(c.data for c in logs.chunks)
