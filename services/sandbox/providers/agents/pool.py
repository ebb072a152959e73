"""The ACP client side: agent processes in sandboxes, their sessions, and the permission policy.

One agent process per (sandbox, agent), started in the checkout in its own process group, speaking
ACP over stdio through `acp.connect_to_agent`. Sessions of that agent are `session/new` on it. Every
incoming message is observed in wire order and recorded by the session's `SessionRecorder`.
Agent processes belong to this service process: they are killed (process group) on close, and a
restarted service starts them again on demand.

Permission requests are answered by the session's policy at once (ALLOW, REJECT), or under ASK
recorded durably (`PermissionLog.open`: a PENDING request and its PERMISSION_REQUEST event) while
the agent's call waits on an in-memory future until `answer_permission` resolves it (after the
answer was recorded), or until `session/cancel` answers it `cancelled`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import acp
from acp import schema
from acp.connection import StreamDirection, StreamEvent

from services.platform import clock
from services.platform.aio import cancel_and_log
from services.platform.logging import get_logger
from services.sandbox.domain import models as m
from services.sandbox.domain import permissions as p
from services.sandbox.domain.errors import AgentFailed, not_found
from services.sandbox.domain.models import WORK
from services.sandbox.domain.ports import PermissionLog, Provider
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
    can_load: bool = False  # the agent offers `session/load` (capability `loadSession`)
    start_time: Any = None
    recorders: dict[str, SessionRecorder] = field(default_factory=dict)  # acp session id → recorder
    policies: dict[str, m.PermissionPolicy] = field(default_factory=dict)
    stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=_STDERR_LINES))
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Asks the user (policy ASK): (acp session id, request params) → the chosen option id, "" = cancelled.
    ask: Callable[[str, dict[str, Any]], Awaitable[str]] | None = None
    environment: dict[str, str] = field(default_factory=dict)  # what it was started with

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
            if self.policies.get(str(params.get("sessionId", ""))) is m.PermissionPolicy.ASK:
                return  # recorded with its request id when it is asked (AgentPool._ask)
            recorder.put(m.NewEvent(m.EventKind.PERMISSION_REQUEST, m.EventSender.AGENT, "", params))


@dataclass
class LiveSession:
    """An ACP session on a running agent process, with the recorder that logs its messages."""

    key: m.SessionKey
    handle: AgentHandle
    acp_session_id: str
    recorder: SessionRecorder
    on_cancel: Callable[[m.SessionKey], Awaitable[None]] | None = None
    model_option: str = ""  # the id of the agent's config option of category `model` ("" if none)
    model: str = ""  # that option's value in effect

    @property
    def alive(self) -> bool:
        return self.handle.alive

    async def use_model(self, model: str) -> None:
        """Switch the agent to `model` (ACP `session/set_config_option` on its model option) unless it
        already uses it; an empty model keeps the agent's own choice. An agent without a model option
        keeps its model (logged). Raises what the connection raises when the agent refuses."""
        if not model or model == self.model:
            return
        if not self.model_option:
            log.warning(
                "agent_has_no_model_option", session=self.key.name, agent=self.handle.agent, model=model
            )
            self.model = model
            return
        await self.handle.conn.set_config_option(
            config_id=self.model_option, session_id=self.acp_session_id, value=model
        )
        self.model = model

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
        """`session/cancel` (a notification: the running prompt ends with stop reason `cancelled`);
        permission requests the agent waits on are then answered `cancelled`, as ACP asks."""
        await self.handle.conn.cancel(session_id=self.acp_session_id)
        if self.on_cancel is not None:
            await self.on_cancel(self.key)

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
        if policy is m.PermissionPolicy.ASK and self._handle.ask is not None:
            params = {
                "sessionId": session_id,
                "toolCall": _json(tool_call),
                "options": [_json(o) for o in options],
            }
            option_id = await self._handle.ask(session_id, params)  # recorded, with its answer
            return schema.RequestPermissionResponse(
                outcome=schema.AllowedOutcome(outcome="selected", option_id=option_id)
                if option_id
                else schema.DeniedOutcome(outcome="cancelled")
            )
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
        permissions: records permission requests asked of the user (policy ASK); without it, ASK
            answers every request `cancelled`.
    """

    def __init__(
        self,
        provider: Provider,
        agents: Mapping[str, str],
        *,
        append: Append,
        extra_path: list[str] | None = None,
        permissions: PermissionLog | None = None,
    ) -> None:
        self._provider = provider
        self._agents = dict(agents)
        self._append = append
        self._extra_path = extra_path or []
        self._permissions = permissions
        self._handles: dict[tuple[m.SandboxKey, str], AgentHandle] = {}
        self._locks: dict[tuple[m.SandboxKey, str], asyncio.Lock] = {}
        self._sessions: dict[m.SessionKey, LiveSession] = {}
        # The organization's model API keys per sandbox, given by the task service (StartAgent,
        # StartAgentSession, PromptSession): the environment its agents start with, over the
        # provider's own. In memory only, never logged.
        self._environments: dict[m.SandboxKey, dict[str, str]] = {}
        # Requests an agent of this process waits on: (session, request id) → (its answer, the agent).
        self._waiting: dict[tuple[m.SessionKey, str], tuple[asyncio.Future[str], AgentHandle]] = {}

    # -- permission requests asked of the user (policy ASK) --------------------------------------

    async def _ask(self, handle: AgentHandle, acp_session_id: str, params: dict[str, Any]) -> str:
        """Record the request (PENDING, with its PERMISSION_REQUEST event after every update received
        before it) and wait for its answer; returns the chosen option id, "" for `cancelled`."""
        recorder = handle.recorders.get(acp_session_id)
        if recorder is None or self._permissions is None:
            return ""
        await recorder.flush()
        key, request_id = recorder.key, uuid.uuid4().hex
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting[(key, request_id)] = (future, handle)
        try:
            await self._permissions.open(key, recorder.turn_id, request_id, params)
            log.info("permission_requested", session=key.name, request=request_id)
            return await future
        finally:
            self._waiting.pop((key, request_id), None)

    def waiting(self, key: m.SessionKey, request_id: str) -> bool:
        """Whether an agent of this process (still running) waits for the answer to this request."""
        entry = self._waiting.get((key, request_id))
        return entry is not None and not entry[0].done() and entry[1].alive

    def answer_permission(self, key: m.SessionKey, request_id: str, option_id: str) -> bool:
        """Hand an answer (already recorded) to the agent waiting for it ("" = `cancelled`). Returns
        whether one was waiting."""
        entry = self._waiting.get((key, request_id))
        if entry is None or entry[0].done():
            return False
        entry[0].set_result(option_id)
        return True

    async def _cancel_waiting(self, key: m.SessionKey) -> None:
        """Answer `cancelled` every request of the session an agent of this process waits on."""
        if self._permissions is None:
            return
        for session_key, request_id in [k for k in self._waiting if k[0] == key]:
            request = await self._permissions.get(session_key, request_id)
            if request is not None:
                await self._permissions.answer(
                    request, outcome=p.PermissionOutcome.CANCELLED, option_id="", user="", delivered=True
                )
            self.answer_permission(session_key, request_id, "")

    def resolve_command(self, agent: str) -> list[str] | None:
        """The argv of `agent` with its executable resolved, or None when it is not installed."""
        command = self._agents.get(agent)
        if command is None:
            raise not_found("agent", f"agents/{agent}")
        argv = shlex.split(command)
        path = os.pathsep.join([os.environ.get("PATH", ""), *self._extra_path])
        found = shutil.which(argv[0], path=path) if argv else None
        return [found, *argv[1:]] if found else None

    def set_environment(self, sandbox: m.SandboxKey, environment: Mapping[str, str]) -> None:
        """The variables (the organization's model API keys) the sandbox's agents start with from now
        on; an agent already running keeps its own."""
        if environment:
            self._environments[sandbox] = dict(environment)
        else:
            self._environments.pop(sandbox, None)

    def environment(self, sandbox: m.SandboxKey) -> Mapping[str, str]:
        """What `set_environment` gave for the sandbox (empty when nothing)."""
        return self._environments.get(sandbox, {})

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
                process = await self._provider.spawn(
                    sandbox.provider_sandbox_id,
                    argv,
                    cwd=WORK,
                    stdin=True,
                    env=self._environments.get(sandbox.key),  # never in argv
                )
            except OSError as exc:
                raise AgentFailed(f"agent {agent}: cannot start {argv[0]}: {exc}") from exc
            handle = AgentHandle(
                sandbox.key,
                agent,
                process,
                start_time=clock.now(),
                environment=dict(self._environments.get(sandbox.key) or {}),
            )
            handle.ask = lambda acp_id, params: self._ask(handle, acp_id, params)
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
            capabilities = init.agent_capabilities
            handle.can_load = bool(capabilities is not None and capabilities.load_session)
            self._handles[key] = handle
            log.info("agent_started", sandbox=sandbox.key.name, agent=agent, pid=process.pid)
            return handle

    def live(self, key: m.SessionKey) -> LiveSession | None:
        """The session's ACP session in this process, if its agent still runs."""
        live = self._sessions.get(key)
        return live if live is not None and live.alive else None

    async def open(self, sandbox: m.Sandbox, session: m.AgentSession) -> tuple[LiveSession, m.Opened]:
        """The live ACP session of `session`, and how it was got (`m.Opened`): the one this process
        has (LIVE); else, on the agent process (started if needed), `session/new` for a session that
        never had one (NEW); for one whose agent process is gone (a service restart, a dead agent),
        `session/load` of its ACP session where the agent offers it (LOADED: the agent replays the
        conversation, which is not logged a second time), else a `session/new` that replaces it
        (REPLACED: the log keeps the transcript, the agent does not remember it). Then
        `session/set_mode` when a mode is set.

        Raises NotFound (unknown agent) and AgentFailed (agent not installed, died, or refused).
        """
        live = self.live(session.key)
        if live is not None:
            live.handle.policies[live.acp_session_id] = session.permission_policy
            await self._use_model(live, session.model)
            return live, m.Opened.LIVE
        handle = await self.ensure(sandbox, session.agent)
        assert sandbox.checkout is not None
        previous, acp_id = session.acp_session_id, ""
        how = m.Opened.REPLACED if previous else m.Opened.NEW
        step = "session/load"
        opened: Any = None
        try:
            cwd = self._provider.sandbox_path(sandbox.provider_sandbox_id, WORK)  # as the agent sees it
            if previous and handle.can_load:
                try:
                    # No recorder is registered for it yet: the replayed history is not logged again.
                    opened = await handle.conn.load_session(cwd=cwd, session_id=previous, mcp_servers=[])
                    acp_id, how = previous, m.Opened.LOADED
                except acp.RequestError as exc:
                    log.warning("agent_session_load_refused", session=session.key.name, error=str(exc))
            if not acp_id:
                step = "session/new"
                opened = await handle.conn.new_session(cwd=cwd, mcp_servers=[])
                acp_id = str(opened.session_id)
            handle.policies[acp_id] = session.permission_policy
            recorder = handle.recorders[acp_id] = SessionRecorder(session.key, self._append)
            if session.mode:
                step = "session/set_mode"
                await handle.conn.set_session_mode(session_id=acp_id, mode_id=session.mode)
        except Exception as exc:
            raise AgentFailed(f"agent {handle.agent}: {step} failed: {_describe(exc, handle)}") from exc
        live = self._sessions[session.key] = LiveSession(
            session.key, handle, acp_id, recorder, on_cancel=self._cancel_waiting
        )
        live.model_option, live.model = _model_option(opened)
        await self._use_model(live, session.model)
        if how is not m.Opened.NEW:
            log.info("agent_session_reopened", session=session.key.name, how=how.value, acp_session_id=acp_id)
        return live, how

    async def _use_model(self, live: LiveSession, model: str) -> None:
        try:
            await live.use_model(model)
        except Exception as exc:
            raise AgentFailed(
                f"agent {live.handle.agent}: choosing the model {model!r} failed: "
                f"{_describe(exc, live.handle)}"
            ) from exc

    async def close_session(self, key: m.SessionKey) -> None:
        """Forget the session's ACP session (its recorder writes what it holds first)."""
        live = self._sessions.pop(key, None)
        if live is None:
            return
        recorder = live.handle.recorders.pop(live.acp_session_id, None)
        live.handle.policies.pop(live.acp_session_id, None)
        if recorder is not None:
            await recorder.close()

    def started_with(self, sandbox: m.SandboxKey, agent: str) -> Mapping[str, str] | None:
        """The environment the running `agent` of `sandbox` was started with (None: not running)."""
        handle = self.handle(sandbox, agent)
        return None if handle is None else handle.environment

    def rename(self, old: m.SandboxKey, new: m.SandboxKey) -> None:
        """Move the agents of sandbox `old` to the name `new` (a warm sandbox claimed by a task;
        it has no sessions yet)."""
        for key in [k for k in self._handles if k[0] == old]:
            handle = self._handles.pop(key)
            handle.sandbox = new
            self._handles[(new, key[1])] = handle
            self._locks.pop(key, None)

    async def stop_agent(self, sandbox: m.SandboxKey, agent: str) -> None:
        """Stop one agent process of `sandbox` (its sessions are forgotten)."""
        handle = self._handles.pop((sandbox, agent), None)
        if handle is None:
            return
        for session_key in [k for k, live in self._sessions.items() if live.handle is handle]:
            del self._sessions[session_key]
        await self._stop(handle)

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
        """Close stdin (well-behaved agents exit on EOF), then SIGTERM and SIGKILL the agent and what it
        started (`Provider.signal`).
        Its unanswered permission requests stay PENDING (answered later, they are not delivered)."""
        for future, owner in list(self._waiting.values()):
            if owner is handle and not future.done():
                future.cancel()
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
                await self._provider.signal(process.pid, sig)
            try:
                await asyncio.wait_for(process.wait(), wait)
                break
            except TimeoutError:
                continue
        await self._provider.signal(process.pid, signal.SIGKILL)  # leftovers (commands the agent started)
        # Bounded: a swallowed cancel must not hang the stop.
        await cancel_and_log(
            handle.tasks, log, "agent_tasks_ignored_cancel", sandbox=handle.sandbox.name, agent=handle.agent
        )


def _json(value: Any) -> Any:
    """An ACP schema object as its JSON form (camelCase keys); plain values as they are."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    return value


def _model_option(opened: Any) -> tuple[str, str]:
    """(id, current value) of the select config option of category `model` a `session/new` or
    `session/load` answer offers, or ("", "")."""
    for option in getattr(opened, "config_options", None) or []:
        inner = getattr(option, "root", option)
        if getattr(inner, "category", None) == "model" and getattr(inner, "type", None) == "select":
            return str(inner.id), str(inner.current_value)
    return "", ""


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
