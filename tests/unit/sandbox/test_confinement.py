"""The bubblewrap provider, attacked from inside: every escape a hostile agent or process would try must
fail, on the real provider (skipped only where bubblewrap cannot run, with the reason).

The sandbox service runs in this test process, so its environment is the one a leak would show: a
canary secret is put there, and the service's data directory, SQLite files and the other sandbox are
real paths on this host.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from foundry.sandbox.v1 import process_pb2, sandbox_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as pb
from foundry.sandbox.v1 import sandbox_service_pb2_grpc as pb_grpc

from gateway.app import GatewayComponent
from services.platform.errors import from_rpc_error
from services.platform.identity import Caller
from services.platform.settings import SandboxSettings, Settings
from services.sandbox.providers.bubblewrap import _SandboxCgroups, available, toolchain_paths
from tests.helpers.eventually import assert_eventually
from tests.helpers.mesh import Mesh, running
from tests.unit.sandbox.conftest import prepared_sandbox, sandbox_stub
from tests.unit.sandbox.test_processes import _host_pids, stop_when_ready

CANARY = "canary-7f3e9b21-not-for-sandboxes"
MODEL_KEY = "sk-ant-test-9c2d-for-agents-only"
WHY = available()
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"bubblewrap unavailable: {WHY}")


@pytest.fixture(scope="module")
def model_api() -> Iterator[int]:
    """A local HTTP server standing in for an allowlisted model API (answers `model-api-ok`)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"model-api-ok"
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture
async def confined(
    settings_factory: Callable[..., Settings], model_api: int, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Mesh, pb_grpc.SandboxServiceAsyncStub]]:
    monkeypatch.setenv("FOUNDRY_TEST_CANARY", CANARY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", MODEL_KEY)  # the operator's key for the agents
    settings = settings_factory(
        sandbox=SandboxSettings(
            provider="bubblewrap",
            max_processes=48,
            memory_mb=512,
            egress="model_apis",
            egress_allowlist=[f"127.0.0.1:{model_api}"],
        ),
    )
    async with running(settings, ["sandbox"]) as mesh, sandbox_stub(mesh) as stub:
        yield mesh, stub


async def run(
    stub: pb_grpc.SandboxServiceAsyncStub, sandbox: str, script: str, *, timeout: float = 30
) -> tuple[int, str]:
    """Run `script` with /bin/sh in the sandbox; (exit code or -signal, stdout+stderr)."""
    process = (
        await stub.CreateProcess(
            pb.CreateProcessRequest(
                parent=sandbox, process=process_pb2.Process(command="/bin/sh", args=["-c", script])
            )
        )
    ).process

    async def exited() -> process_pb2.Process:
        current = (await stub.GetProcess(pb.GetProcessRequest(name=process.name))).process
        assert current.state == process_pb2.PROCESS_STATE_EXITED
        return current

    done = await assert_eventually(exited, timeout=timeout)
    logs = await stub.GetProcessLogs(pb.GetProcessLogsRequest(name=process.name))
    output = b"".join(c.data for c in logs.chunks).decode(errors="replace")
    return (done.exit_code if done.HasField("exit_code") else -done.exit_signal), output


def _fetch_command() -> str:
    """A shell command prefix that prints the body of the URL that follows (through the proxy, if any)."""
    return (
        f'{_python()} -c "import sys, urllib.request; '
        'print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())" '
    )


def _python() -> str:
    return str(Path(sys.executable))  # bound read-only inside at the same path


async def test_the_filesystem_holds_only_the_checkout_and_the_toolchain(
    confined: tuple[Mesh, pb_grpc.SandboxServiceAsyncStub], origin: Path
) -> None:
    mesh, stub = confined
    mine = await prepared_sandbox(stub, origin, sandbox_id="mine")
    theirs = await prepared_sandbox(stub, origin, sandbox_id="theirs")
    their_checkout = Path(theirs.checkout.path)
    (their_checkout / "secret.txt").write_text("their secret\n")
    data_dir = mesh.settings.data_dir.resolve()
    assert list(data_dir.glob("*.sqlite3")), "the service's database files exist on the host"

    _code, out = await run(
        stub,
        mine.name,
        f"id -u; pwd; ls /; ls /workspace; "
        f"cat {their_checkout}/secret.txt; cat {data_dir}/sandbox.sqlite3 | head -c 16; "
        f"ls {mesh.settings.sandbox_root()}; ls {data_dir}; echo end",
    )
    lines = out.splitlines()
    assert lines[0] == "1000", out  # an unprivileged uid inside
    assert lines[1] == "/workspace", out
    assert "README.md" in out  # its own checkout is there
    assert "their secret" not in out and "SQLite format" not in out, out
    assert out.count("No such file or directory") >= 4, out
    assert set(lines[2 : lines.index("README.md")]) <= {
        "bin",
        "dev",
        "etc",
        "home",
        "lib",
        "lib64",
        "proc",
        "root",
        "run",
        "sbin",
        "tmp",
        "usr",
        "workspace",
        # The toolchain's top directories (this checkout's venv and package, wherever it lives).
        *(Path(p).parts[1] for p in toolchain_paths()),
    }, out
    # Writes land in the checkout and nowhere else of the host.
    _, out = await run(stub, mine.name, "echo hi > /workspace/made-inside.txt; touch /usr/evil; echo $?")
    assert await asyncio.to_thread(Path(mine.checkout.path, "made-inside.txt").read_text) == "hi\n"
    assert "1" in out.splitlines() and "Read-only file system" in out, out
    assert not await asyncio.to_thread(Path("/usr/evil").exists)


async def test_no_process_or_environment_of_the_host_is_visible(
    confined: tuple[Mesh, pb_grpc.SandboxServiceAsyncStub], origin: Path
) -> None:
    _, stub = confined
    assert os.environ["FOUNDRY_TEST_CANARY"] == CANARY  # the service's environment has the secret
    sandbox = await prepared_sandbox(stub, origin)
    _code, out = await run(
        stub,
        sandbox.name,
        "env; echo ---; ls /proc | grep -c '^[0-9]'; "
        "cat /proc/*/environ /proc/*/cmdline 2>/dev/null | tr '\\0' '\\n'",
    )
    assert CANARY not in out, out
    assert "FOUNDRY_INTERNAL_AUTH_SECRET" not in out and "FOUNDRY_DATABASE_URL" not in out, out
    assert "PYTEST" not in out, out
    env_part, _, rest = out.partition("---\n")
    assert int(rest.splitlines()[0]) <= 6, out  # bwrap's init, the shell and its pipeline only
    assert "HOME=/home/agent" in env_part


async def test_the_hosts_loopback_services_are_unreachable(
    confined: tuple[Mesh, pb_grpc.SandboxServiceAsyncStub], origin: Path
) -> None:
    mesh, stub = confined
    sandbox = await prepared_sandbox(stub, origin)
    gateway = GatewayComponent(mesh.settings, port=0)
    await gateway.start()
    # A port on every interface (as FOUNDRY_BIND_HOST=0.0.0.0 serves): reached at the host's own
    # non-loopback addresses too.
    everywhere = socket.create_server(("0.0.0.0", 0))
    try:
        ports = {
            "postgresql": 5432,
            "rabbitmq": 5672,
            "sandbox grpc": mesh.hosts["sandbox"].port,
            "gateway": gateway.port,
        }
        targets = [(name, "127.0.0.1", port) for name, port in ports.items()]
        targets += [("0.0.0.0 listener", a, everywhere.getsockname()[1]) for a in _own_addresses()]
        for name, host, port in targets:
            with socket.create_connection((host, port), timeout=2):
                pass  # reachable from the host: the test is meaningful
            script = (
                f"{_python()} -c \"import socket; socket.create_connection(('{host}', {port}), timeout=2); "
                "print('CONNECTED')\""
            )
            code, out = await run(stub, sandbox.name, script)
            assert "CONNECTED" not in out and code != 0, (name, host, out)
            assert "Connection refused" in out or "unreachable" in out, (name, host, out)
    finally:
        everywhere.close()
        await gateway.begin_drain()
        await gateway.wait_idle(5)
        await gateway.close()


def _own_addresses() -> list[str]:
    """This host's IPv4 addresses besides loopback (from the kernel's routing view)."""
    found: set[str] = set()
    with contextlib.suppress(OSError):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: only picks the outgoing address
            found.add(probe.getsockname()[0])
    return sorted(a for a in found if not a.startswith("127."))


async def test_egress_reaches_only_the_allowlist_through_the_proxy(
    confined: tuple[Mesh, pb_grpc.SandboxServiceAsyncStub], origin: Path, model_api: int
) -> None:
    _, stub = confined
    sandbox = await prepared_sandbox(stub, origin)
    fetch = _fetch_command()
    code, out = await run(stub, sandbox.name, fetch + f"http://127.0.0.1:{model_api}/v1/messages")
    assert code == 0 and "model-api-ok" in out, out
    code, out = await run(stub, sandbox.name, fetch + "http://127.0.0.1:5432/")
    assert code != 0 and "403" in out, out
    # CONNECT to a host off the list is refused too (what HTTPS clients do).
    script = (
        f"{_python()} -c \"import http.client; c = http.client.HTTPConnection('127.0.0.1', 3128, timeout=5); "
        "c.request('CONNECT', 'example.com:443'); print(c.getresponse().status)\""
    )
    code, out = await run(stub, sandbox.name, script)
    assert out.strip() == "403", out


async def test_a_stopped_command_still_reaches_its_allowlisted_api_while_it_cleans_up(
    confined: tuple[Mesh, pb_grpc.SandboxServiceAsyncStub], origin: Path, model_api: int
) -> None:
    """StopProcess's SIGTERM goes to the command and what it started, not to the sandbox's egress
    forwarder: a command that reports to its model API when it is stopped still gets through."""
    _, stub = confined
    sandbox = await prepared_sandbox(stub, origin)
    report = _fetch_command() + f"http://127.0.0.1:{model_api}/v1/messages"
    script = f"trap '{report}; exit 0' TERM; echo ready; while :; do sleep 0.1; done"
    process = (
        await stub.CreateProcess(
            pb.CreateProcessRequest(
                parent=sandbox.name, process=process_pb2.Process(command="/bin/sh", args=["-c", script])
            )
        )
    ).process

    done, output = await stop_when_ready(stub, process.name)
    assert (done.exit_code, done.exit_signal) == (0, 0), (done, output)
    assert b"model-api-ok" in output, output


async def test_process_and_memory_limits_hold(
    confined: tuple[Mesh, pb_grpc.SandboxServiceAsyncStub], origin: Path
) -> None:
    _, stub = confined
    sandbox = await prepared_sandbox(stub, origin)
    marker = str(61000 + os.getpid() % 1000)
    bomb = await stub.CreateProcess(
        pb.CreateProcessRequest(
            parent=sandbox.name,
            process=process_pb2.Process(
                command=_python(),
                args=[
                    "-c",
                    "import subprocess, sys, time\n"
                    "started = 0\n"
                    "for _ in range(200):\n"
                    "    try:\n"
                    "        subprocess.Popen(['sleep', sys.argv[1]]); started += 1\n"
                    "    except OSError:\n"
                    "        pass\n"
                    "print(started, flush=True); time.sleep(600)",
                    marker,
                ],
            ),
        )
    )

    def capped() -> int:
        alive = len(_host_pids(["sleep", marker]))
        assert 30 < alive <= 48, f"{alive} sleeps running with max_processes=48"
        return alive

    await assert_eventually(capped)
    # Killing the process kills what it started (its PID namespace goes with it), freeing the pids.
    await stub.KillProcess(pb.KillProcessRequest(name=bomb.process.name))
    await assert_eventually(lambda: _gone(marker))
    code, out = await run(
        stub, sandbox.name, f"{_python()} -c \"b = bytearray(1024 ** 3); print('ALLOCATED')\""
    )
    assert code != 0 and "ALLOCATED" not in out and "MemoryError" in out, out


def _gone(marker: str) -> None:
    assert not _host_pids(["sleep", marker])


def _memory_controller_unwritable() -> str | None:
    """Why this host does not let this process make a memory cgroup (None when it does), found by
    making one where the provider would, independently of the provider's own detection."""
    root = Path("/sys/fs/cgroup")
    v1 = (root / "memory" / "cgroup.procs").exists()
    if not v1 and "memory" not in _text(root / "cgroup.subtree_control").split():
        return "no memory controller enabled under /sys/fs/cgroup (cgroup v1 or v2)"
    probe = (root / "memory" if v1 else root) / f"foundry-test-probe-{os.getpid()}"
    try:
        probe.mkdir()
    except OSError as exc:
        return f"cannot make a memory cgroup in {probe.parent}: {exc.strerror}"
    probe.rmdir()
    return None


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def test_a_host_without_the_controllers_says_the_limits_are_not_enforced(tmp_path: Path) -> None:
    """What `sandbox_confinement` logs where no cgroup can be made, and that commands then join none."""
    groups = _SandboxCgroups({"pids": 8, "memory": 1 << 20}, root=tmp_path)
    assert groups.state["memory"].startswith("unavailable: no memory controller in "), groups.state
    assert groups.state["pids"].startswith("unavailable: no pids controller in "), groups.state
    assert groups.join(tmp_path / "sandbox") == []
    off = _SandboxCgroups({"pids": 0, "memory": 0}, root=tmp_path)
    assert set(off.state.values()) == {"off (no limit configured)"}


@pytest.mark.skipif(
    (NO_MEMORY_CGROUP := _memory_controller_unwritable()) is not None,
    reason=f"per-sandbox memory limit not enforceable here: {NO_MEMORY_CGROUP}",
)
async def test_a_sandbox_is_oom_killed_past_its_memory_limit_and_another_is_unaffected(
    settings_factory: Callable[..., Settings], origin: Path
) -> None:
    """Four processes of one sandbox hold 64 MiB each, each far below the per-process address-space
    limit (512 MiB), together far above the sandbox's 128 MiB: the kernel OOM-kills them (SIGKILL, not
    a MemoryError) until at most one holds its memory, while a process of another sandbox holding
    96 MiB at the same time runs to its end."""
    settings = settings_factory(
        sandbox=SandboxSettings(provider="bubblewrap", memory_mb=512, sandbox_memory_mb=128)
    )
    hold = (
        f"{_python()} -c \"import sys, time; b = b'x' * (int(sys.argv[1]) * 1024 ** 2); "
        "print('held', flush=True); time.sleep(4); print('done', len(b) // 1024 ** 2, flush=True)\""
    )
    hog_script = " ".join(f"{hold} 64 & p{i}=$!;" for i in range(4))
    hog_script += " ".join(f"wait $p{i}; echo exit=$?;" for i in range(4))
    async with running(settings, ["sandbox"]) as mesh, sandbox_stub(mesh) as stub:
        hog = await prepared_sandbox(stub, origin, sandbox_id="hog")
        calm = await prepared_sandbox(stub, origin, sandbox_id="calm")
        hogging = asyncio.create_task(run(stub, hog.name, hog_script, timeout=60))
        calm_code, calm_out = await run(stub, calm.name, f"{hold} 96", timeout=60)
        hog_code, hog_out = await hogging
    assert calm_code == 0 and "done 96" in calm_out, calm_out
    assert hog_code == 0, hog_out
    assert "exit=137" in hog_out, f"no process was OOM-killed:\n{hog_out}"
    assert hog_out.count("done 64") <= 1, f"more than 128 MiB held in one sandbox:\n{hog_out}"
    assert "MemoryError" not in hog_out, hog_out


async def test_teardown_leaves_no_process_behind(
    confined: tuple[Mesh, pb_grpc.SandboxServiceAsyncStub], origin: Path
) -> None:
    _, stub = confined
    sandbox = await prepared_sandbox(stub, origin)
    marker = str(62000 + os.getpid() % 1000)
    # Detached twice over (new session, reparented): still inside the sandbox's PID namespace.
    await stub.CreateProcess(
        pb.CreateProcessRequest(
            parent=sandbox.name,
            process=process_pb2.Process(
                command="/bin/sh",
                args=["-c", f"setsid sh -c 'sleep {marker} & sleep {marker}' > /dev/null 2>&1 & sleep 600"],
            ),
        )
    )
    await assert_eventually(lambda: _count(marker, 2))
    await stub.DestroySandbox(pb.DestroySandboxRequest(name=sandbox.name, reason="test"))
    await assert_eventually(lambda: _gone(marker))


def _count(marker: str, expected: int) -> None:
    assert len(_host_pids(["sleep", marker])) == expected


async def test_a_user_cannot_run_the_sandboxs_commands_or_point_them_at_host_paths(
    confined: tuple[Mesh, pb_grpc.SandboxServiceAsyncStub], origin: Path
) -> None:
    """Git and provider commands are the task workers' steps: a user's token (even a member's) is
    refused each of them with SERVICE_ONLY, and nothing runs (no file reverted, no sandbox created)."""
    mesh, stub = confined
    sandbox = await prepared_sandbox(stub, origin)
    work = Path(sandbox.checkout.path)
    await asyncio.to_thread((work / "README.md").write_text, "edited by the agent\n")
    session = f"{sandbox.name}/sessions/s1"
    async with sandbox_stub(mesh, Caller(subject="user/1001", login="alice")) as as_user:
        for call in (
            as_user.PrepareRepository(
                pb.PrepareRepositoryRequest(
                    name=sandbox.name, clone_url=str(mesh.settings.data_dir), branch="x"
                )
            ),
            as_user.PushBranch(pb.PushBranchRequest(name=sandbox.name)),
            as_user.CreateSandbox(
                pb.CreateSandboxRequest(
                    parent=sandbox.name.split("/sandboxes/")[0],
                    sandbox_id="by-user",
                    sandbox=sandbox_pb2.Sandbox(task=sandbox.task, repository=sandbox.repository),
                )
            ),
            as_user.DestroySandbox(pb.DestroySandboxRequest(name=sandbox.name)),
            as_user.StartAgent(pb.StartAgentRequest(parent=sandbox.name, agent="agents/fake")),
            as_user.StartAgentSession(
                pb.StartAgentSessionRequest(parent=sandbox.name, session_id="s1", agent="agents/fake")
            ),
            as_user.PromptSession(pb.PromptSessionRequest(name=session, turn_id="t1", text="hi")),
            as_user.CancelTurn(pb.CancelTurnRequest(name=f"{session}/turns/t1")),
            as_user.SetAgentSessionModel(pb.SetAgentSessionModelRequest(name=session, model="x")),
            as_user.CloseAgentSession(pb.CloseAgentSessionRequest(name=session)),
            as_user.RefreshGitState(pb.RefreshGitStateRequest(name=f"{sandbox.name}/gitState")),
            as_user.RevertFile(pb.RevertFileRequest(name=sandbox.name, path="README.md")),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await call
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED, denied.value.details()
            assert from_rpc_error(denied.value).reason == "SERVICE_ONLY", denied.value.details()
    assert (work / "README.md").read_text() == "edited by the agent\n"  # not reverted
    listed = await stub.ListSandboxes(pb.ListSandboxesRequest(parent=sandbox.name.split("/sandboxes/")[0]))
    assert [s.name for s in listed.sandboxes] == [sandbox.name]  # none created by the user, none destroyed
    assert (await stub.GetSandbox(pb.GetSandboxRequest(name=sandbox.name))).sandbox.state == sandbox.state


async def test_service_side_git_never_runs_a_hook_or_helper_planted_in_the_checkout(
    confined: tuple[Mesh, pb_grpc.SandboxServiceAsyncStub], origin: Path, tmp_path: Path
) -> None:
    """A hostile agent plants hooks, an fsmonitor, a credential helper, an `ext::` transport and URL
    rewrites (to run a command, or to fetch another sandbox's repository) in the checkout's git config;
    the service's own git steps (push, re-prepare) must run none of them on the host, and fetch only
    what the organization's repository holds."""
    _, stub = confined
    victim = await prepared_sandbox(stub, origin, sandbox_id="victim")
    victim_work = Path(victim.checkout.path)
    await asyncio.to_thread((victim_work / "secret.txt").write_text, "VICTIM SECRET\n")
    _code, out = await run(
        stub, victim.name, "git add secret.txt && git commit -qm secret && git branch loot && echo ok"
    )
    assert "ok" in out, out
    sandbox = await prepared_sandbox(stub, origin)
    proof = tmp_path / "pwned"
    payload = f"#!/bin/sh\ntouch {proof}\nexit 0\n"
    _code, out = await run(
        stub,
        sandbox.name,
        "cd /workspace && mkdir -p .git/hooks && "
        f"printf '{payload}' > .git/hooks/pre-push && chmod +x .git/hooks/pre-push && "
        f"cp .git/hooks/pre-push .git/hooks/post-checkout && "
        f"git config core.fsmonitor 'touch {proof}' && git config credential.helper '!touch {proof}' && "
        f"git config core.hooksPath .git/hooks && git config protocol.ext.allow always && "
        f"git config 'url.ext::sh -c touch% {proof}% ;% false.insteadOf' '{origin}' && echo planted",
    )
    assert "planted" in out, out
    with contextlib.suppress(grpc.aio.AioRpcError):  # (the rewritten URL fails inside: fine)
        await stub.PushBranch(pb.PushBranchRequest(name=sandbox.name, commit_message="work"))
    with contextlib.suppress(grpc.aio.AioRpcError):
        await stub.PrepareRepository(
            pb.PrepareRepositoryRequest(name=sandbox.name, clone_url=str(origin), branch="other-branch")
        )
    assert not await asyncio.to_thread(proof.exists), "a planted hook or transport ran on the host"
    # Redirect the service's fetch to the victim's checkout instead: nothing of it may arrive.
    _code, out = await run(
        stub,
        sandbox.name,
        f"git config --unset-all 'url.ext::sh -c touch% {proof}% ;% false.insteadOf'; "
        f"git config 'url.{victim_work}.insteadOf' '{origin}' && echo planted",
    )
    assert "planted" in out, out
    with contextlib.suppress(grpc.aio.AioRpcError):
        await stub.PrepareRepository(
            pb.PrepareRepositoryRequest(name=sandbox.name, clone_url=str(origin), branch="third-branch")
        )
    _code, out = await run(stub, sandbox.name, "git branch -a; git log --all --oneline")
    assert "loot" not in out and "secret" not in out, out


async def test_a_push_that_links_to_other_objects_is_refused(
    confined: tuple[Mesh, pb_grpc.SandboxServiceAsyncStub], origin: Path
) -> None:
    """The agent redirects its confined push to a script that, after receiving, plants alternates
    pointing at another sandbox's objects: the service must push nothing."""
    _, stub = confined
    victim = await prepared_sandbox(stub, origin, sandbox_id="victim2")
    sandbox = await prepared_sandbox(stub, origin)
    evil = (
        "#!/bin/sh\ngit receive-pack /run/foundry/push.git\n"
        f"echo {victim.checkout.path}/.git/objects > /run/foundry/push.git/objects/info/alternates\n"
    )
    _code, out = await run(
        stub,
        sandbox.name,
        f"printf '{evil}' > /home/agent/evil.sh && chmod +x /home/agent/evil.sh && "
        "git config protocol.ext.allow always && "
        "git config 'url.ext::/home/agent/evil.sh .insteadOf' /run/foundry/push.git && echo planted",
    )
    assert "planted" in out, out
    before = await asyncio.to_thread(_branches, origin)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.PushBranch(pb.PushBranchRequest(name=sandbox.name, commit_message="work"))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.value
    assert "links outside" in (refused.value.details() or "")
    assert await asyncio.to_thread(_branches, origin) == before


async def test_only_the_services_own_push_sees_the_push_repository(
    confined: tuple[Mesh, pb_grpc.SandboxServiceAsyncStub], origin: Path
) -> None:
    """While a push is under way the service-owned `push.git` exists beside the checkout, its objects
    and refs writable from inside. Only the one confined `git push` into it may see it: a process
    started then, or agent code the service's own git runs (an fsmonitor hook during a git-state
    refresh), could otherwise plant a symlink to another sandbox's objects after the service checked
    and before it pushed."""
    _, stub = confined
    sandbox = await prepared_sandbox(stub, origin)
    push = Path(sandbox.checkout.path).parent / "push.git"
    await asyncio.to_thread(
        subprocess.run, ["git", "init", "--quiet", "--bare", str(push)], check=True
    )  # as push_branch creates it, mid-push
    _code, out = await run(stub, sandbox.name, "ls -d /run/foundry/push.git/objects 2>&1; echo end")
    assert "No such file or directory" in out, out
    _code, out = await run(
        stub,
        sandbox.name,
        "git config core.fsmonitor 'ls -d /run/foundry/push.git/refs > /workspace/.seen 2>&1; false'"
        " && echo planted",
    )
    assert "planted" in out, out
    await stub.RefreshGitState(pb.RefreshGitStateRequest(name=f"{sandbox.name}/gitState"))
    seen = Path(sandbox.checkout.path, ".seen")
    assert await asyncio.to_thread(seen.exists), "the planted fsmonitor hook never ran"
    assert "No such file or directory" in await asyncio.to_thread(seen.read_text)
    await asyncio.to_thread(shutil.rmtree, push)
    # The service's own push still works (it is the one command that gets the push repository).
    _code, out = await run(stub, sandbox.name, "git config --unset core.fsmonitor; rm .seen; echo w > w.txt")
    pushed = await stub.PushBranch(pb.PushBranchRequest(name=sandbox.name, commit_message="work"))
    assert pushed.head_commit, pushed


def _branches(repo: Path) -> str:
    import subprocess

    return subprocess.run(
        ["git", "-C", str(repo), "branch", "-a"], capture_output=True, text=True, check=True
    ).stdout


async def test_revert_never_follows_the_agents_symlinks_out_of_the_checkout(
    confined: tuple[Mesh, pb_grpc.SandboxServiceAsyncStub], origin: Path
) -> None:
    """`a/egress` is added, then `a` replaced by a link to the sandbox's folder: reverting the file
    must not delete the service's own file beside the checkout (the sandbox's egress policy)."""
    _, stub = confined
    sandbox = await prepared_sandbox(stub, origin)
    policy = Path(sandbox.checkout.path).parent / "egress"
    assert await asyncio.to_thread(policy.exists)
    _code, out = await run(
        stub,
        sandbox.name,
        "mkdir a && echo x > a/egress && git add a/egress && rm -r a && ln -s .. a && echo ok",
    )
    assert "ok" in out, out
    with contextlib.suppress(grpc.aio.AioRpcError):
        await stub.RevertFile(pb.RevertFileRequest(name=sandbox.name, path="a/egress"))
    assert await asyncio.to_thread(policy.exists), "revert deleted a file outside the checkout"


async def test_a_hostile_agent_sees_what_a_process_sees(
    confined: tuple[Mesh, pb_grpc.SandboxServiceAsyncStub], origin: Path
) -> None:
    """The agent process itself (the offline agent, driven over ACP) is confined like CreateProcess:
    its shell commands find no host secret, no data directory and no loopback service."""
    mesh, stub = confined
    from tests.unit.sandbox.test_sessions import K, prompt, start_session, watch_until_turn_ends

    session = await start_session(stub, origin)
    data_dir = mesh.settings.data_dir.resolve()
    script = (
        f"$ id -u; echo cwd=$(pwd); ls {data_dir} 2>&1; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'; "
        f"{_python()} -c \"import socket; socket.create_connection(('127.0.0.1', 5432), timeout=2)\" "
        "2>&1 | tail -1"
    )
    await prompt(stub, session, "hostile", script)
    _, events = await watch_until_turn_ends(stub, session)
    said = "\n".join(
        e.text
        for e in events
        if e.kind in (K.SESSION_EVENT_KIND_TOOL_CALL_UPDATE, K.SESSION_EVENT_KIND_AGENT_MESSAGE_CHUNK)
    )
    said += "\n".join(str(e.payload) for e in events)
    assert "cwd=/workspace" in said, said
    assert "1000" in said and "No such file or directory" in said, said
    assert CANARY not in said and "FOUNDRY_" not in said.replace("FOUNDRY_GIT", ""), said
    assert "Connection refused" in said, said


async def test_the_agent_gets_its_model_api_key_and_no_service_secret(
    confined: tuple[Mesh, pb_grpc.SandboxServiceAsyncStub], origin: Path
) -> None:
    """Under the default provider a real agent must still reach its model: the operator's model API key
    reaches the agent's environment (only that of the service's variables: no canary, no FOUNDRY_*)."""
    _, stub = confined
    from tests.unit.sandbox.test_sessions import K, prompt, start_session, watch_until_turn_ends

    session = await start_session(stub, origin)
    await prompt(stub, session, "env", "$ env | sort")
    _, events = await watch_until_turn_ends(stub, session)
    said = "\n".join(e.text for e in events if e.kind == K.SESSION_EVENT_KIND_TOOL_CALL_UPDATE)
    said += "\n".join(str(e.payload) for e in events)
    assert f"ANTHROPIC_API_KEY={MODEL_KEY}" in said, said
    assert CANARY not in said and "FOUNDRY_INTERNAL" not in said and "FOUNDRY_DATABASE" not in said, said


async def test_a_command_linked_to_a_host_path_tells_nothing_of_the_host(
    confined: tuple[Mesh, pb_grpc.SandboxServiceAsyncStub], origin: Path, tmp_path: Path
) -> None:
    """Before starting a command the service checks it exists inside; it must not follow the sandbox's
    own links on the host to do so, or CreateProcess would tell whether any host file exists (e.g.
    another organization's checkout: `<root>/<org>--<sandbox>/work/.git/hooks/*.sample`)."""
    _, stub = confined
    sandbox = await prepared_sandbox(stub, origin)
    present = tmp_path / "host-only.sh"
    await asyncio.to_thread(present.write_text, "#!/bin/sh\necho HOST-RAN\n")
    await asyncio.to_thread(present.chmod, 0o755)
    _code, out = await run(
        stub, sandbox.name, f"ln -s {present} present && ln -s {tmp_path}/absent.sh absent && echo linked"
    )
    assert "linked" in out, out

    async def outcome(command: str) -> str:
        try:
            created = await stub.CreateProcess(
                pb.CreateProcessRequest(parent=sandbox.name, process=process_pb2.Process(command=command))
            )
        except grpc.aio.AioRpcError as error:
            return f"refused {error.code()}"

        async def exited() -> process_pb2.Process:
            current = (await stub.GetProcess(pb.GetProcessRequest(name=created.process.name))).process
            assert current.state == process_pb2.PROCESS_STATE_EXITED
            return current

        done = await assert_eventually(exited)
        logs = await stub.GetProcessLogs(pb.GetProcessLogsRequest(name=created.process.name))
        assert b"HOST-RAN" not in b"".join(c.data for c in logs.chunks)
        return f"exited {done.exit_code}"

    assert await outcome("/workspace/present") == await outcome("/workspace/absent")


async def test_a_checkout_of_another_sandbox_cannot_be_cloned(
    confined: tuple[Mesh, pb_grpc.SandboxServiceAsyncStub], origin: Path
) -> None:
    _, stub = confined
    victim = await prepared_sandbox(stub, origin, sandbox_id="victim")
    thief = await prepared_sandbox(stub, origin, sandbox_id="thief")
    for url in (victim.checkout.path, f"file://{victim.checkout.path}"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.PrepareRepository(
                pb.PrepareRepositoryRequest(name=thief.name, clone_url=url, branch="loot")
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value


async def test_an_organization_policy_of_none_cuts_the_sandbox_off(
    confined: tuple[Mesh, pb_grpc.SandboxServiceAsyncStub], origin: Path, model_api: int
) -> None:
    _, stub = confined
    created = await stub.CreateSandbox(
        pb.CreateSandboxRequest(
            parent="organizations/acme",
            sandbox_id="offline",
            sandbox=sandbox_pb2.Sandbox(
                task="organizations/acme/tasks/offline", repository="organizations/acme/repositories/demo"
            ),
            egress_policy="none",
        )
    )
    await stub.PrepareRepository(
        pb.PrepareRepositoryRequest(name=created.sandbox.name, clone_url=str(origin), branch="offline")
    )
    fetch = _fetch_command()
    code, out = await run(
        stub, created.sandbox.name, "env | grep -ci proxy; " + fetch + f"http://127.0.0.1:{model_api}/"
    )
    assert out.splitlines()[0] == "0", out  # no proxy at all
    assert code != 0 and "model-api-ok" not in out, out
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.CreateSandbox(
            pb.CreateSandboxRequest(
                parent="organizations/acme",
                sandbox_id="bad-policy",
                sandbox=sandbox_pb2.Sandbox(
                    task="organizations/acme/tasks/bad-policy",
                    repository="organizations/acme/repositories/demo",
                ),
                egress_policy="everything",
            )
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
