"""What the sandbox domain needs from the outside world, as Protocols.

`Provider` hosts sandboxes (the `local` provider: one directory per sandbox on this machine).
Paths given to a provider are relative to the sandbox root unless absolute inside it; commands run
in their own process group so a whole tree can be signalled.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from services.sandbox.domain.models import (
    AgentConnection,
    AgentSession,
    GitState,
    NewEvent,
    Opened,
    Process,
    ProcessState,
    Sandbox,
    SandboxKey,
    SessionEvent,
    SessionKey,
    SessionState,
    Turn,
    TurnState,
)
from services.sandbox.domain.permissions import PermissionOutcome, PermissionRequest


@dataclass(frozen=True)
class ExecResult:
    """A finished command: exit status and decoded output (UTF-8, undecodable bytes replaced)."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Provider(Protocol):
    """A place where sandboxes live. Every method is idempotent where the name allows it.

    Raises `services.platform.errors.Unavailable` for provider failures worth retrying.
    """

    name: str

    async def create(self, key: SandboxKey, *, egress: str = "") -> str:
        """Create (or find) the sandbox of `key`; returns the provider's own id of it. `egress` is the
        organization's network policy (`none`, `model_apis`, `open`; "" for the provider's default),
        kept for the sandbox's life (providers that do not confine ignore it)."""
        ...

    async def resume(self, provider_id: str) -> None:
        """Make an existing sandbox usable again (after a service restart); raises Unavailable if gone."""
        ...

    async def destroy(self, provider_id: str) -> None:
        """Remove the sandbox and everything in it; a missing sandbox is fine."""
        ...

    async def health(self, provider_id: str) -> bool:
        """True when the sandbox exists and can run commands."""
        ...

    def root(self, provider_id: str) -> str:
        """The absolute path of the sandbox's root directory (the checkout is `<root>/work`)."""
        ...

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
        """Run `argv` to completion in the sandbox (cwd relative to the root); never raises on a
        non-zero exit. Raises Unavailable when the command cannot start or exceeds `timeout` seconds.

        `confined=False` runs it as the service itself (a confining provider then lets it see the
        host): only for the service's own steps that never read what an agent wrote — a fresh clone,
        moving it into place, pushing from the service-owned push repository."""
        ...

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
        """Start a long-running `argv` in its own process group with piped stdout/stderr (and stdin
        when asked). Raises FileNotFoundError when the executable does not exist.

        `tty`: the slave end of a pseudo-terminal, instead of pipes the command's stdin, stdout, stderr
        and controlling terminal (a terminal: the caller keeps the master end)."""
        ...

    async def signal(self, pid: int, sig: int) -> None:
        """Deliver `sig` to the command `spawn` started as `pid` and to what it started (its process
        group; under bubblewrap, the processes of its sandbox), so the command can shut down. SIGKILL
        ends all of it at once. A process already gone is fine."""
        ...

    def sandbox_path(self, provider_id: str, path: str) -> str:
        """`path` (relative to the sandbox root) as the sandbox's own processes see it (the checkout is
        `/workspace` in a bubblewrap sandbox, the host path in a local one)."""
        ...

    async def read_file(self, provider_id: str, path: str) -> bytes:
        """The bytes of a file in the sandbox; raises FileNotFoundError."""
        ...

    async def write_file(self, provider_id: str, path: str, data: bytes) -> None:
        """Create or replace a file in the sandbox (parents created)."""
        ...

    async def remove(self, provider_id: str, path: str) -> None:
        """Delete a file or directory tree in the sandbox; missing is fine."""
        ...


class Recorder(Protocol):
    """Writes one session's events in the order they are put."""

    turn_id: str

    def put(self, event: NewEvent) -> None: ...

    async def flush(self) -> None: ...


class LiveSession(Protocol):
    """An ACP session on a running agent process of this service process."""

    @property
    def acp_session_id(self) -> str: ...

    @property
    def recorder(self) -> Recorder: ...

    @property
    def alive(self) -> bool: ...

    @property
    def pid(self) -> int: ...

    async def prompt(self, blocks: list[str]) -> str:
        """Send a prompt; returns the ACP stop reason. Raises when the agent fails or dies."""
        ...

    async def cancel(self) -> None: ...

    async def failure(self, exc: BaseException) -> str:
        """A readable message for an exception raised by `prompt` or `cancel`."""
        ...


class Agents(Protocol):
    """Agent processes and their ACP sessions (see `services.sandbox.providers.agents.pool.AgentPool`)."""

    def resolve_command(self, agent: str) -> list[str] | None: ...

    def set_environment(self, sandbox: SandboxKey, environment: Mapping[str, str]) -> None: ...

    def environment(self, sandbox: SandboxKey) -> Mapping[str, str]: ...

    async def ensure(self, sandbox: Sandbox, agent: str) -> object: ...

    def connection(self, sandbox: SandboxKey, agent: str) -> AgentConnection: ...

    def live(self, key: SessionKey) -> LiveSession | None: ...

    async def open(self, sandbox: Sandbox, session: AgentSession) -> tuple[LiveSession, Opened]: ...

    async def close_session(self, key: SessionKey) -> None: ...

    async def stop_sandbox(self, sandbox: SandboxKey) -> None: ...

    def started_with(self, sandbox: SandboxKey, agent: str) -> Mapping[str, str] | None: ...

    def rename(self, old: SandboxKey, new: SandboxKey) -> None: ...

    async def stop_agent(self, sandbox: SandboxKey, agent: str) -> None: ...

    def waiting(self, key: SessionKey, request_id: str) -> bool: ...

    def answer_permission(self, key: SessionKey, request_id: str, option_id: str) -> bool: ...


class SandboxRecords(Protocol):
    """Sandboxes, sessions and turns (see `services.sandbox.store.sandboxes.SandboxRecords`)."""

    async def get_sandbox(self, key: SandboxKey) -> Sandbox | None: ...

    async def list_sandboxes(
        self, organization: str, *, show_destroyed: bool, offset: int, limit: int
    ) -> list[Sandbox]: ...

    async def insert_sandbox(self, sandbox: Sandbox) -> tuple[Sandbox, bool]: ...

    async def update_sandbox(
        self, key: SandboxKey, *, refresh_git: bool = False, **changes: Any
    ) -> Sandbox: ...

    async def get_session(self, key: SessionKey) -> AgentSession | None: ...

    async def list_sessions(self, key: SandboxKey) -> list[AgentSession]: ...

    async def insert_session(self, agent_session: AgentSession) -> tuple[AgentSession, bool]: ...

    async def update_session(self, key: SessionKey, **changes: Any) -> AgentSession: ...

    async def get_turn(self, key: SessionKey, turn_id: str) -> Turn | None: ...

    async def queue_turn(self, turn: Turn) -> tuple[Turn, bool]: ...

    async def claim_next_turn(self, key: SessionKey, runner: str) -> Turn | None: ...

    async def update_turn(self, key: SessionKey, turn_id: str, **changes: Any) -> None: ...

    async def finish_turn(
        self,
        turn: Turn,
        *,
        state: TurnState,
        stop_reason: str = "",
        error: str = "",
        session_state: SessionState = SessionState.IDLE,
        session_error: str = "",
        events: Sequence[NewEvent] = (),
        only_if: TurnState | None = None,
    ) -> Turn: ...

    async def turns_in(
        self, states: Sequence[TurnState], key: SessionKey | None = None, *, replica: str | None = None
    ) -> list[Turn]: ...

    async def kick(self, key: SessionKey) -> bool: ...


class PermissionLog(Protocol):
    """Permission requests asked of the user (see `services.sandbox.store.permissions.PermissionRecords`)."""

    async def open(self, key: SessionKey, turn_id: str, request_id: str, params: dict[str, Any]) -> None:
        """Record a PENDING request and its PERMISSION_REQUEST event."""
        ...

    async def get(self, key: SessionKey, request_id: str) -> PermissionRequest | None: ...

    async def pending(self, key: SessionKey, turn_id: str | None = None) -> list[PermissionRequest]: ...

    async def answer(
        self,
        request: PermissionRequest,
        *,
        outcome: PermissionOutcome,
        option_id: str,
        user: str,
        delivered: bool,
    ) -> PermissionRequest | None:
        """Leave PENDING with the PERMISSION_RESPONSE event; None when it was no longer PENDING."""
        ...


class LogRecords(Protocol):
    """Event logs, git states and processes (see `services.sandbox.store.logs.LogRecords`)."""

    async def append_events(
        self, key: SessionKey, turn_id: str, events: Sequence[NewEvent]
    ) -> list[SessionEvent]: ...

    async def list_events(self, key: SessionKey, *, after_seq: int, limit: int) -> list[SessionEvent]: ...

    async def get_git_state(self, key: SandboxKey) -> GitState | None: ...

    async def save_git_state(self, state: GitState, *, task: str) -> GitState: ...

    async def get_process(self, key: SandboxKey, process_id: str) -> Process | None: ...

    async def find_process_by_request(self, key: SandboxKey, request_id: str) -> Process | None: ...

    async def list_processes(
        self,
        key: SandboxKey,
        *,
        offset: int = 0,
        limit: int | None = None,
        states: Sequence[ProcessState] | None = None,
    ) -> list[Process]: ...

    async def running_processes(self, replica: str) -> list[Process]: ...

    async def insert_process(self, process: Process) -> Process: ...

    async def update_process(
        self, key: SandboxKey, process_id: str, *, when_state: ProcessState | None = None, **changes: Any
    ) -> Process: ...

    async def delete_process(self, key: SandboxKey, process_id: str) -> None: ...

    async def record_output(
        self, process_name: str, offset: int, data: bytes, capture_time: dt.datetime
    ) -> None: ...
