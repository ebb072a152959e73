"""The `local` provider: one directory per sandbox under `Settings.sandbox_root()`.

Layout of a sandbox directory `<root>/<organization>--<sandbox>/`:

    work/        the repository checkout (agents and processes start here)
    processes/   captured output of long-running processes, one folder each
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.platform.errors import Unavailable
from services.sandbox.domain.errors import DOMAIN
from services.sandbox.domain.models import SandboxKey
from services.sandbox.domain.ports import ExecResult


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
        return merged

    def sandbox_path(self, provider_id: str, path: str) -> str:
        """`path` (relative to the sandbox root) as the sandbox's own processes see it."""
        return str(self._path(provider_id, path))

    async def _command(
        self, provider_id: str, argv: Sequence[str], cwd: str, env: Mapping[str, str] | None, confined: bool
    ) -> Command:
        """Unconfined: the command runs as a child of the service, in the sandbox's directory."""
        return Command(list(argv), self._path(provider_id, cwd), self._merged_env(env))

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
    ) -> asyncio.subprocess.Process:
        command = await self._command(provider_id, argv, cwd, env, True)
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
