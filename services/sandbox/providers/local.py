"""The `local` provider: one directory per sandbox under `Settings.sandbox_root()`.

Layout of a sandbox directory `<root>/<organization>--<sandbox>/`:

    work/        the repository checkout (agents and processes start here)
    processes/   captured output of long-running processes, one folder each

Commands run unconfined are children of the service in sessions of their own: a service killed with
SIGKILL leaves them running (reparented to init). Each carries `FOUNDRY_SANDBOX_LIFELINE` in its
environment (a digest of the sandbox root, inherited by everything it starts), and the next start of
the service on that root kills every process still carrying it that is not its own descendant
(`kill_leftovers`). Found by what the process is, not by a recorded pid, so a reused pid is never hit;
a command that empties its environment (`env -i`) escapes it. Bubblewrap-confined commands die with
the service instead, in a pid namespace of their own (see `bubblewrap`: `setpriv --pdeathsig`, its reaper,
and its `kill_leftovers` finding bwrap by its arguments).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.platform.errors import Unavailable
from services.platform.logging import get_logger
from services.sandbox.domain.errors import DOMAIN
from services.sandbox.domain.models import SandboxKey
from services.sandbox.domain.ports import ExecResult

# Makes the pseudo-terminal on stdin the controlling terminal of the command it then becomes (exec, same
# pid): job control and Ctrl-C work in a terminal. Python's own modules only (-I -S: nothing of the
# site or the environment), so it runs wherever the service's Python is bound (inside bubblewrap too).
_CTTY = (
    "import fcntl, os, sys, termios\n"
    "try:\n    os.setsid()\nexcept OSError:\n    pass\n"
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0)\n"
    "os.execvp(sys.argv[1], sys.argv[1:])"
)
LIFELINE_ENV = "FOUNDRY_SANDBOX_LIFELINE"
log = get_logger(__name__)


def controlling_tty(argv: Sequence[str]) -> list[str]:
    """`argv` started on its stdin as controlling terminal (see `_CTTY`)."""
    return [sys.executable, "-I", "-S", "-c", _CTTY, *argv]


@dataclass(frozen=True)
class Command:
    """What to start on the host for a sandbox command: argv, host cwd, environment."""

    argv: list[str]
    cwd: Path
    env: dict[str, str]


class LocalProvider:
    """Sandboxes as directories on this machine; commands run as child processes of the service.

    Args:
        root: the directory holding one folder per sandbox (created when missing).
        create_delay_seconds: artificial latency added to `create` (benchmarks of slow providers).
        base_env: the environment every command starts from (PATH, HOME, ...).
    """

    name = "local"

    def __init__(self, root: Path, *, create_delay_seconds: float = 0.0, base_env: Mapping[str, str]) -> None:
        self._root = root
        self._delay = create_delay_seconds
        self._env = dict(base_env)
        self.lifeline = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]

    def kill_leftovers(self) -> list[int]:
        """SIGKILL every process an earlier life of this service started on this sandbox root and left
        behind (killed with SIGKILL, it could not stop them); returns their pids. Call at start-up."""
        killed = kill_marked(f"{LIFELINE_ENV}={self.lifeline}".encode())
        if killed:
            log.warning("sandbox_leftover_processes_killed", count=len(killed), pids=killed)
        return killed

    async def close(self) -> None:
        """Release what the provider holds for its sandboxes (service shutdown)."""

    def root(self, provider_id: str) -> str:
        return str(self._root / provider_id)

    def _path(self, provider_id: str, path: str) -> Path:
        """`path` under the sandbox root; ValueError when it leaves it or passes through a symlink
        (an agent can plant one: the service must never follow it to the host)."""
        root = Path(self.root(provider_id))
        target = root / path if path else root
        current = root
        for part in Path(path).parts if path else ():
            if part in ("..", "/"):
                raise ValueError(f"{path!r} leaves the sandbox")
            current = current / part
            if current.is_symlink():
                raise ValueError(f"{path!r} passes through a symlink")
        return target

    async def create(self, key: SandboxKey, *, egress: str = "") -> str:
        if self._delay:
            await asyncio.sleep(self._delay)
        provider_id = f"{key.organization}--{key.sandbox_id}"
        await asyncio.to_thread((self._root / provider_id).mkdir, parents=True, exist_ok=True)
        return provider_id

    async def resume(self, provider_id: str) -> None:
        if not await self.health(provider_id):
            raise Unavailable(
                f"sandbox directory {self.root(provider_id)} is gone",
                reason="SANDBOX_GONE",
                domain=DOMAIN,
                retryable=False,
            )

    async def destroy(self, provider_id: str) -> None:
        path = Path(self.root(provider_id))
        await asyncio.to_thread(shutil.rmtree, path, True)

    async def health(self, provider_id: str) -> bool:
        return await asyncio.to_thread(Path(self.root(provider_id)).is_dir)

    def _merged_env(self, env: Mapping[str, str] | None) -> dict[str, str]:
        merged = dict(self._env)
        merged.update(env or {})
        merged[LIFELINE_ENV] = self.lifeline
        return merged

    def sandbox_path(self, provider_id: str, path: str) -> str:
        """`path` (relative to the sandbox root) as the sandbox's own processes see it."""
        return str(self._path(provider_id, path))

    async def _command(
        self,
        provider_id: str,
        argv: Sequence[str],
        cwd: str,
        env: Mapping[str, str] | None,
        confined: bool,
        spawned: bool = False,
        tty: bool = False,
    ) -> Command:
        """Unconfined: the command runs as a child of the service, in the sandbox's directory.
        `spawned`: started by `spawn` (an agent or a user's process), not a service-side `exec`.
        `tty`: on a pseudo-terminal that becomes its controlling terminal."""
        host_cwd = self._path(provider_id, cwd)
        merged = self._merged_env(env)
        if not tty:
            return Command(list(argv), host_cwd, merged)
        # The helper would start even when the command is missing: say so as starting it would.
        command = argv[0] if "/" not in argv[0] else str(host_cwd / argv[0])
        if shutil.which(command, path=merged.get("PATH", os.defpath)) is None:
            raise FileNotFoundError(2, "No such file or directory", argv[0])
        return Command(controlling_tty(argv), host_cwd, merged)

    async def exec(
        self,
        provider_id: str,
        argv: Sequence[str],
        *,
        cwd: str = "",
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        confined: bool = True,
    ) -> ExecResult:
        command = await self._command(provider_id, argv, cwd, env, confined)
        try:
            proc = await asyncio.create_subprocess_exec(
                *command.argv,
                cwd=command.cwd,
                env=command.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
            raise Unavailable(f"cannot run {argv[0]}: {exc}", reason="EXEC_FAILED", domain=DOMAIN) from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except asyncio.CancelledError:
            _kill_group(proc.pid)
            raise
        except TimeoutError:
            _kill_group(proc.pid)
            await proc.wait()
            raise Unavailable(
                f"{' '.join(argv[:3])} timed out after {timeout} s", reason="EXEC_TIMEOUT", domain=DOMAIN
            ) from None
        return ExecResult(
            tuple(argv), proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")
        )

    async def spawn(
        self,
        provider_id: str,
        argv: Sequence[str],
        *,
        cwd: str = "",
        env: Mapping[str, str] | None = None,
        stdin: bool = False,
        tty: int | None = None,
    ) -> asyncio.subprocess.Process:
        command = await self._command(provider_id, argv, cwd, env, True, spawned=True, tty=tty is not None)
        if tty is not None:
            return await asyncio.create_subprocess_exec(
                *command.argv,
                cwd=command.cwd,
                env=command.env,
                stdin=tty,
                stdout=tty,
                stderr=tty,
                start_new_session=True,
            )
        return await asyncio.create_subprocess_exec(
            *command.argv,
            cwd=command.cwd,
            env=command.env,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            limit=16 * 1024 * 1024,
        )

    async def signal(self, pid: int, sig: int) -> None:
        """`sig` to the process group `spawn` made (`start_new_session`)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    async def read_file(self, provider_id: str, path: str) -> bytes:
        return await asyncio.to_thread(self._path(provider_id, path).read_bytes)

    async def write_file(self, provider_id: str, path: str, data: bytes) -> None:
        target = self._path(provider_id, path)

        def write() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)

        await asyncio.to_thread(write)

    async def remove(self, provider_id: str, path: str) -> None:
        target = self._path(provider_id, path)

        def remove() -> None:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    target.unlink()

        await asyncio.to_thread(remove)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, 9)


def _proc_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _environ(pid: int) -> list[bytes]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return f.read().split(b"\0")


def _stat(pid: int) -> list[bytes]:
    """The fields of /proc/<pid>/stat after "pid (comm)": state, parent pid, ... Raises OSError."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return stat[stat.rindex(b")") + 2 :].split()


def _parent(pid: int) -> int:
    return int(_stat(pid)[1])


def signal_pinned(pid: int, still: Callable[[int], bool], sig: int) -> bool:
    """Send `sig` to `pid` if `still(pid)` holds once the process is pinned by a pidfd: a pid that was
    reaped and reused between a caller's read of /proc and the signal is never hit. True when sent."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # gone
        return False
    try:
        if still(pid):  # still the process the caller read (the pidfd pins it from here on)
            signal.pidfd_send_signal(fd, sig)
            return True
    except OSError:  # exited meanwhile, or not ours to read
        pass
    finally:
        os.close(fd)
    return False


def kill_marked(entry: bytes) -> list[int]:
    """SIGKILL every process whose environment holds `entry` (`NAME=value`), except this process and its
    descendants. Race-free against pid reuse: the process is pinned with a pidfd, then checked again."""
    return _kill_if(lambda pid: entry in _environ(pid))


def kill_where(test: Callable[[list[bytes]], bool]) -> list[int]:
    """As `kill_marked`, for every process whose arguments pass `test`."""
    return _kill_if(lambda pid: test(_cmdline(pid)))


def _cmdline(pid: int) -> list[bytes]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().split(b"\0")[:-1]


def _kill_if(matches: Callable[[int], bool]) -> list[int]:
    if not os.path.isdir("/proc"):
        return []
    me = os.getpid()
    parents: dict[int, int] = {}
    for pid in _proc_pids():
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[pid] = _parent(pid)

    def mine(pid: int) -> bool:
        seen = set()
        while pid > 1 and pid not in seen:
            if pid == me:
                return True
            seen.add(pid)
            pid = parents.get(pid, 0)
        return False

    killed: list[int] = []
    for pid in parents:
        if mine(pid):
            continue
        try:
            if not matches(pid):
                continue
        except OSError:  # gone, or not ours to read
            continue
        if signal_pinned(pid, matches, signal.SIGKILL):
            killed.append(pid)
    return killed
