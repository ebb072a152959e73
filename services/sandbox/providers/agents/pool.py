"""The ACP client side: agent processes in sandboxes, their sessions, and the permission policy.

One agent process per (sandbox, agent), started in the checkout in its own process group, speaking
ACP over stdio through `acp.connect_to_agent`. Sessions of that agent are `session/new` on it. Every
incoming message is observed in wire order and recorded by the session's `SessionRecorder`.
Agent processes belong to this service process: they are killed (process group) on close, and a
restarted service starts them again on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import acp
from acp import schema
from acp.connection import StreamDirection, StreamEvent

from services.platform import clock
from services.platform.logging import get_logger
from services.sandbox.domain import models as m
from services.sandbox.domain.errors import AgentFailed, not_found
from services.sandbox.domain.models import WORK
from services.sandbox.domain.ports import Provider
from services.sandbox.providers.agents.recorder import Append, SessionRecorder, event_from_update

log = get_logger(__name__)
INITIALIZE_TIMEOUT_SECONDS = 60.0
_STDERR_LINES = 20


def choose_permission(policy: m.PermissionPolicy, options: list[schema.PermissionOption]) -> str | None:
    """The option id the policy picks (allow: allow_once before allow_always; reject: reject_once before
    reject_always), or None when the agent offered no such option."""
    order = (
        ("allow_once", "allow_always")
        if policy is m.PermissionPolicy.ALLOW
        else ("reject_once", "reject_always")
    )
    for kind in order:
        for option in options:
            if option.kind == kind:
                return option.option_id
    return None


@dataclass
class AgentHandle:
    """A running agent process and its ACP connection."""

    sandbox: m.SandboxKey
    agent: str
    process: asyncio.subprocess.Process
    conn: Any = None
    protocol_version: int = 0
    start_time: Any = None
    recorders: dict[str, SessionRecorder] = field(default_factory=dict)  # acp session id → recorder
    policies: dict[str, m.PermissionPolicy] = field(default_factory=dict)
    stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=_STDERR_LINES))
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def exit_description(self) -> str:
        code = self.process.returncode
        how = (
            f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with status {code}"
        )
        tail = " | ".join(self.stderr_tail)
        return f"agent {self.agent} {how}" + (f"; stderr: {tail}" if tail else "")

    def observe(self, event: StreamEvent) -> None:
        """Record incoming session/update and permission requests, in wire order (sync)."""
        if event.direction is not StreamDirection.INCOMING:
            return
        method = event.message.get("method")
        params = event.message.get("params") or {}
        recorder = self.recorders.get(str(params.get("sessionId", "")))
        if recorder is None:
            return
        if method == "session/update":
            recorder.put(event_from_update(params.get("update") or {}))
        elif method == "session/request_permission":
            recorder.put(m.NewEvent(m.EventKind.PERMISSION_REQUEST, m.EventSender.AGENT, "", params))


@dataclass
class LiveSession:
    """An ACP session on a running agent process, with the recorder that logs its messages."""

    key: m.SessionKey
    handle: AgentHandle
    acp_session_id: str
    recorder: SessionRecorder

    @property
    def alive(self) -> bool:
        return self.handle.alive

    @property
    def pid(self) -> int:
        return self.handle.process.pid

    async def prompt(self, blocks: list[str]) -> str:
        """`session/prompt` with one text block per entry; returns the stop reason once every update
        received before the answer has been handed to the recorder."""
        response = await self.handle.conn.prompt(
            session_id=self.acp_session_id, prompt=[acp.text_block(b) for b in blocks]
        )
        return str(response.stop_reason)

    async def cancel(self) -> None:
        """`session/cancel` (a notification: the running prompt ends with stop reason `cancelled`)."""
        await self.handle.conn.cancel(session_id=self.acp_session_id)

    async def failure(self, exc: BaseException) -> str:
        """A readable message for an exception raised by a call on this session. A closed connection
        usually means the agent died: its exit is awaited briefly so the message can say how."""
        if isinstance(exc, ConnectionError):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.handle.process.wait(), 2.0)
        return _describe(exc, self.handle)


class _Client:
    """The ACP `Client` the agent talks to: answers permission requests by the session's policy."""

    def __init__(self, handle: AgentHandle) -> None:
        self._handle = handle

    async def session_update(self, session_id: str, update: Any, **_: Any) -> None:
        return None  # recorded by AgentHandle.observe, in wire order

    async def request_permission(
        self, session_id: str, tool_call: Any, options: list[schema.PermissionOption], **_: Any
    ) -> schema.RequestPermissionResponse:
        policy = self._handle.policies.get(session_id, m.PermissionPolicy.ALLOW)
        chosen = choose_permission(policy, options)
        outcome: schema.AllowedOutcome | schema.DeniedOutcome = (
            schema.AllowedOutcome(outcome="selected", option_id=chosen)
            if chosen is not None
            else schema.DeniedOutcome(outcome="cancelled")
        )
        response = schema.RequestPermissionResponse(outcome=outcome)
        recorder = self._handle.recorders.get(session_id)
        if recorder is not None:
            payload = response.model_dump(mode="json", by_alias=True, exclude_none=True)
            recorder.put(
                m.NewEvent(
                    m.EventKind.PERMISSION_RESPONSE,
                    m.EventSender.CLIENT,
                    f"{policy.value}: {chosen or 'no matching option'}",
                    payload,
                )
            )
        return response


class AgentPool:
    """Starts and tracks agent processes of this service process.

    Args:
        provider: runs the agent inside the sandbox.
        agents: configured agent name → command line.
        append: writes event batches (the session log).
        extra_path: directories searched for agent commands after PATH (the service's own bin dir).
    """

    def __init__(
        self,
        provider: Provider,
        agents: Mapping[str, str],
        *,
        append: Append,
        extra_path: list[str] | None = None,
    ) -> None:
        self._provider = provider
        self._agents = dict(agents)
        self._append = append
        self._extra_path = extra_path or []
        self._handles: dict[tuple[m.SandboxKey, str], AgentHandle] = {}
        self._locks: dict[tuple[m.SandboxKey, str], asyncio.Lock] = {}
        self._sessions: dict[m.SessionKey, LiveSession] = {}

    def resolve_command(self, agent: str) -> list[str] | None:
        """The argv of `agent` with its executable resolved, or None when it is not installed."""
        command = self._agents.get(agent)
        if command is None:
            raise not_found("agent", f"agents/{agent}")
        argv = shlex.split(command)
        path = os.pathsep.join([os.environ.get("PATH", ""), *self._extra_path])
        found = shutil.which(argv[0], path=path) if argv else None
        return [found, *argv[1:]] if found else None

    def handle(self, sandbox: m.SandboxKey, agent: str) -> AgentHandle | None:
        """The live agent process of `agent` in `sandbox`, if this process runs one."""
        handle = self._handles.get((sandbox, agent))
        return handle if handle is not None and handle.alive else None

    async def ensure(self, sandbox: m.Sandbox, agent: str) -> AgentHandle:
        """Return the running agent, or start it in the checkout and complete `initialize`.

        Raises NotFound (unknown agent) and AgentFailed (not installed, exited, initialize failed).
        """
        key = (sandbox.key, agent)
        async with self._locks.setdefault(key, asyncio.Lock()):
            handle = self.handle(sandbox.key, agent)
            if handle is not None:
                return handle
            argv = await asyncio.to_thread(self.resolve_command, agent)  # scans PATH: off the loop
            if argv is None:
                raise AgentFailed(
                    f"agent {agent}: command {self._agents[agent]!r} is not installed on this replica",
                    reason="AGENT_NOT_INSTALLED",
                )
            try:
                process = await self._provider.spawn(sandbox.provider_sandbox_id, argv, cwd=WORK, stdin=True)
            except OSError as exc:
                raise AgentFailed(f"agent {agent}: cannot start {argv[0]}: {exc}") from exc
            handle = AgentHandle(sandbox.key, agent, process, start_time=clock.now())
            handle.tasks.append(asyncio.create_task(self._drain_stderr(handle), name=f"agent-stderr-{agent}"))
            assert process.stdin is not None and process.stdout is not None
            handle.conn = acp.connect_to_agent(
                cast(acp.Client, _Client(handle)), process.stdin, process.stdout, observers=[handle.observe]
            )
            try:
                init = await asyncio.wait_for(
                    handle.conn.initialize(
                        protocol_version=acp.PROTOCOL_VERSION,
                        client_info=schema.Implementation(name="foundry-sandbox", version="1"),
                    ),
                    INITIALIZE_TIMEOUT_SECONDS,
                )
            except Exception as exc:
                await self._stop(handle)
                raise AgentFailed(
                    f"agent {agent}: initialize failed ({exc or type(exc).__name__}); "
                    f"{handle.exit_description()}"
                ) from exc
            handle.protocol_version = int(init.protocol_version)
            self._handles[key] = handle
            log.info("agent_started", sandbox=sandbox.key.name, agent=agent, pid=process.pid)
            return handle

    def live(self, key: m.SessionKey) -> LiveSession | None:
        """The session's ACP session in this process, if its agent still runs."""
        live = self._sessions.get(key)
        return live if live is not None and live.alive else None

    async def open(self, sandbox: m.Sandbox, session: m.AgentSession) -> tuple[LiveSession, bool]:
        """The live ACP session of `session`, creating it (`session/new` in the checkout, then
        `session/set_mode` when a mode is set) when this process has none. Returns (live, created).

        Raises NotFound (unknown agent) and AgentFailed (agent not installed, died, or refused).
        """
        live = self.live(session.key)
        if live is not None:
            live.handle.policies[live.acp_session_id] = session.permission_policy
            return live, False
        handle = await self.ensure(sandbox, session.agent)
        assert sandbox.checkout is not None
        try:
            cwd = self._provider.sandbox_path(sandbox.provider_sandbox_id, WORK)  # as the agent sees it
            response = await handle.conn.new_session(cwd=cwd, mcp_servers=[])
            acp_id = str(response.session_id)
            handle.policies[acp_id] = session.permission_policy
            recorder = handle.recorders[acp_id] = SessionRecorder(session.key, self._append)
            if session.mode:
                await handle.conn.set_session_mode(session_id=acp_id, mode_id=session.mode)
        except Exception as exc:
            raise AgentFailed(f"agent {handle.agent}: session/new failed: {_describe(exc, handle)}") from exc
        live = self._sessions[session.key] = LiveSession(session.key, handle, acp_id, recorder)
        return live, True

    async def close_session(self, key: m.SessionKey) -> None:
        """Forget the session's ACP session (its recorder writes what it holds first)."""
        live = self._sessions.pop(key, None)
        if live is None:
            return
        recorder = live.handle.recorders.pop(live.acp_session_id, None)
        live.handle.policies.pop(live.acp_session_id, None)
        if recorder is not None:
            await recorder.close()

    async def stop_sandbox(self, sandbox: m.SandboxKey) -> None:
        """Stop every agent process of `sandbox` (before destroying it)."""
        for key in [k for k in self._handles if k[0] == sandbox]:
            await self._stop(self._handles.pop(key))
        for session_key in [k for k in self._sessions if k.sandbox == sandbox]:
            del self._sessions[session_key]

    async def close(self) -> None:
        """Stop every agent process (service shutdown)."""
        handles, self._handles = list(self._handles.values()), {}
        self._sessions.clear()
        await asyncio.gather(*(self._stop(h) for h in handles), return_exceptions=True)

    def connection(self, sandbox: m.SandboxKey, agent: str) -> m.AgentConnection:
        handle = self._handles.get((sandbox, agent))
        if handle is None:
            return m.AgentConnection(sandbox, agent, "stopped", 0, 0, "", clock.now())
        state = "ready" if handle.alive else "error"
        error = "" if handle.alive else handle.exit_description()
        return m.AgentConnection(
            sandbox,
            agent,
            state,
            handle.process.pid if handle.alive else 0,
            handle.protocol_version,
            error,
            handle.start_time,
        )

    async def _drain_stderr(self, handle: AgentHandle) -> None:
        stream = handle.process.stderr
        if stream is None:
            return
        while line := await stream.readline():
            handle.stderr_tail.append(line.decode(errors="replace").rstrip())

    async def _stop(self, handle: AgentHandle) -> None:
        """Close stdin (well-behaved agents exit on EOF), then SIGTERM and SIGKILL the process group."""
        for recorder in list(handle.recorders.values()):
            await recorder.close()
        handle.recorders.clear()
        if handle.conn is not None:
            with contextlib.suppress(Exception):
                await handle.conn.close()
        process = handle.process
        if process.stdin is not None:
            with contextlib.suppress(Exception):
                process.stdin.close()
        for sig, wait in ((None, 2.0), (signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
            if sig is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, sig)
            try:
                await asyncio.wait_for(process.wait(), wait)
                break
            except TimeoutError:
                continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # leftovers of the group (commands the agent started)
        for task in handle.tasks:
            task.cancel()
        await asyncio.gather(*handle.tasks, return_exceptions=True)


def _describe(exc: BaseException, handle: AgentHandle) -> str:
    if not handle.alive:
        return handle.exit_description()
    if isinstance(exc, acp.RequestError):
        return f"{exc} {exc.data or ''}".strip()
    return str(exc) or type(exc).__name__


def venv_bin() -> str:
    """The directory of the running interpreter (where console scripts such as foundry-fake-agent live)."""
    import sys

    return str(Path(sys.executable).parent)
