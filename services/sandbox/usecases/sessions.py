"""Agents and agent sessions: start an agent, create a session (idempotent by id), queue prompts as
turns, cancel, close, and read the session's event log."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from services.platform.clock import now
from services.platform.logging import get_logger
from services.platform.paging import offset_page
from services.sandbox.domain.errors import DOMAIN, AgentFailed, not_found, precondition, require
from services.sandbox.domain.models import (
    AgentConnection,
    AgentInfo,
    AgentSession,
    Attachment,
    PermissionPolicy,
    SandboxKey,
    SessionEvent,
    SessionKey,
    SessionState,
    Turn,
    TurnState,
)
from services.sandbox.domain.names import valid_id
from services.sandbox.domain.ports import Agents, LogRecords, SandboxRecords
from services.sandbox.usecases.sandboxes import Sandboxes
from services.sandbox.usecases.turns import reopened_notice, unsent_notice

log = get_logger(__name__)


class Sessions:
    """Use cases on agents and agent sessions.

    Args:
        sandboxes: sandbox lookups.
        records: sessions and turns.
        logs: the event logs.
        agents: agent processes of this service process.
        configured: agent name → command (Settings.sandbox.agents).
        default_agent: the agent used when a request names none.
        default_policy: the permission policy used when a request names none.
        models: agent name → its model ids, default first (Settings.sandbox.agent_models).
        credentials: agent name → variables one of which it needs (Settings.sandbox.agent_credentials).
        environ: where those variables are looked up (the service's environment).
    """

    def __init__(
        self,
        sandboxes: Sandboxes,
        records: SandboxRecords,
        logs: LogRecords,
        agents: Agents,
        *,
        configured: Mapping[str, str],
        default_agent: str,
        default_policy: PermissionPolicy = PermissionPolicy.ALLOW,
        models: Mapping[str, Sequence[str]] | None = None,
        credentials: Mapping[str, Sequence[str]] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.sandboxes = sandboxes
        self.records = records
        self.logs = logs
        self.agents = agents
        self.configured = dict(configured)
        self.default_agent = default_agent
        self.default_policy = default_policy
        self.models = {name: tuple(ids) for name, ids in (models or {}).items()}
        self.credentials = {name: tuple(names) for name, names in (credentials or {}).items()}
        self.environ = os.environ if environ is None else environ

    def list_agents(self) -> list[AgentInfo]:
        """The configured agents, the default first."""
        names = sorted(self.configured, key=lambda n: (n != self.default_agent, n))
        return [self._info(n) for n in names]

    def _info(self, name: str) -> AgentInfo:
        return AgentInfo(
            name,
            self.configured[name],
            installed=self.agents.resolve_command(name) is not None,
            default=name == self.default_agent,
            models=self.models.get(name, ()),
            credentials=self.credentials.get(name, ()),
            credentials_present=not self._missing_credentials(name),
        )

    def _missing_credentials(self, agent: str, environment: Mapping[str, str] | None = None) -> str:
        """Why `agent` cannot reach its model API ("" when one of its variables is set, by the
        organization's `environment` or the service's own)."""
        needs = self.credentials.get(agent, ())
        given = environment or {}
        if not needs or any(given.get(v) or self.environ.get(v) for v in needs):
            return ""
        return f"none of {', '.join(needs)} is set for the organization or the sandbox service"

    def use_environment(self, key: SandboxKey, environment: Mapping[str, str]) -> None:
        """Keep the organization's model API keys for the sandbox's agents (replacing the ones given
        before; started agents keep theirs). Only variables of `credentials` are accepted.

        Raises InvalidArgument `environment` naming any other variable (never its value)."""
        allowed = {v for names in self.credentials.values() for v in names}
        unknown = sorted(set(environment) - allowed)
        require(not unknown, "environment", f"not model API key variables: {', '.join(unknown)}")
        self.agents.set_environment(key, environment)

    def _check_model(self, agent: str, model: str) -> None:
        """InvalidArgument `model` when the agent lists its models and `model` is not one of them."""
        offered = self.models.get(agent, ())
        require(
            not (model and offered and model not in offered),
            "model",
            f"agents/{agent} offers the models {', '.join(offered)}, not {model!r}",
        )

    def list_agents_page(self, *, page_size: int, page_token: str) -> tuple[list[AgentInfo], str]:
        """One page of `list_agents` and the next page token ("" on the last page).

        Raises InvalidArgument for a negative page_size or a token this service did not issue.
        """
        offset, limit = offset_page(page_size, page_token, default=100, maximum=1000, domain=DOMAIN)
        agents = self.list_agents()
        require(offset <= len(agents), "page_token", "is not a token this service issued")
        page = agents[offset : offset + limit]
        return page, str(offset + limit) if offset + limit < len(agents) else ""

    def _agent(self, name: str) -> str:
        agent = name or self.default_agent
        if agent not in self.configured:
            raise not_found("agent", f"agents/{agent}")
        return agent

    async def start_agent(self, key: SandboxKey, agent: str) -> AgentConnection:
        """Start the agent in the checkout (ACP `initialize`) or return the running one.
        Raises NotFound (unknown agent), FailedPrecondition (no checkout; agent failed to start)."""
        agent = self._agent(agent)
        sandbox = await self.sandboxes.with_checkout(key)
        if sandbox.from_warm_pool:
            # A warm agent was started with no model API keys: one whose environment is not what the
            # claiming organization gives now is started again with its keys (before any session).
            started = self.agents.started_with(key, agent)
            if (
                started is not None
                and dict(started) != dict(self.agents.environment(key))
                and not await self.records.list_sessions(key)
            ):
                await self.agents.stop_agent(key, agent)
        await self.agents.ensure(sandbox, agent)
        return self.agents.connection(key, agent)

    async def get(self, key: SessionKey) -> AgentSession:
        session = await self.records.get_session(key)
        if session is None:
            raise not_found("session", key.name)
        return session

    async def start_session(
        self,
        sandbox_key: SandboxKey,
        session_id: str,
        *,
        agent: str,
        model: str,
        mode: str,
        policy: PermissionPolicy | None,
    ) -> AgentSession:
        """Create the agent session `session_id` (agent started first if needed; `session/new` in the
        checkout), or return the existing one. A session left CREATING or in ERROR is created again.

        Raises InvalidArgument, NotFound (sandbox, agent), FailedPrecondition (no checkout;
        `AGENT_FAILED` / `AGENT_NOT_INSTALLED` / `AGENT_CREDENTIALS_MISSING` with the agent's message;
        the session is then ERROR).
        """
        require(valid_id(session_id), "session_id", "must be 1-128 letters, digits, '.', '_' or '-'")
        agent = self._agent(agent)
        self._check_model(agent, model)
        sandbox = await self.sandboxes.with_checkout(sandbox_key)
        key = SessionKey(sandbox_key, session_id)
        t = now()
        session, _ = await self.records.insert_session(
            AgentSession(
                key=key,
                agent=agent,
                model=model,
                mode=mode,
                permission_policy=policy or self.default_policy,
                acp_session_id="",
                state=SessionState.CREATING,
                current_turn="",
                last_event_seq=0,
                error_message="",
                create_time=t,
                update_time=t,
                close_time=None,
                version=1,
            )
        )
        if session.state not in (SessionState.CREATING, SessionState.ERROR):
            return session
        try:
            # An agent that is not installed fails in `open` with AGENT_NOT_INSTALLED, which says more.
            missing = self._missing_credentials(agent, self.agents.environment(sandbox_key))
            if missing and self.agents.resolve_command(agent):
                raise AgentFailed(f"agent {agent}: {missing}", reason="AGENT_CREDENTIALS_MISSING")
            live, opened = await self.agents.open(sandbox, session)
        except AgentFailed as exc:
            await self.records.update_session(key, state=SessionState.ERROR, error_message=exc.message)
            raise
        if (notice := reopened_notice(agent, opened)) is not None:
            live.recorder.put(notice)
            await live.recorder.flush()
        log.info("agent_session_started", session=key.name, agent=agent, acp_session_id=live.acp_session_id)
        return await self.records.update_session(
            key, state=SessionState.IDLE, acp_session_id=live.acp_session_id, error_message=""
        )

    async def prompt(
        self,
        key: SessionKey,
        turn_id: str,
        *,
        text: str,
        attachments: list[Attachment],
        user: str,
        permission_policy: PermissionPolicy | None = None,
    ) -> Turn:
        """Queue a turn (durably, with its RunTurn work item) and return it QUEUED; a repeated turn id
        returns the existing turn. A session in ERROR whose agent session once started (its agent
        died, or a turn failed) takes the turn: running it restarts the agent and resumes the ACP
        session (`AgentPool.open`). Raises InvalidArgument, NotFound, FailedPrecondition (session
        closed, still being created, or in ERROR without ever having started)."""
        require(valid_id(turn_id), "turn_id", "must be 1-128 letters, digits, '.', '_' or '-'")
        require(bool(text.strip()) or bool(attachments), "text", "is required")
        require(not user or user.startswith("users/"), "user", "must look like users/{user}")
        session = await self.get(key)
        existing = await self.records.get_turn(key, turn_id)
        if existing is not None:
            return existing
        if not session.accepts_turns:
            detail = f": {session.error_message}" if session.error_message else ""
            raise precondition(f"session {key.name} is {session.state.value}{detail}", "SESSION_NOT_READY")
        if permission_policy is not None and permission_policy is not session.permission_policy:
            # The organization's policy changed: its turns from this one on answer by the new one.
            await self.records.update_session(key, permission_policy=permission_policy)
        turn, _ = await self.records.queue_turn(
            Turn(
                session=key,
                turn_id=turn_id,
                state=TurnState.QUEUED,
                text=text,
                attachments=attachments,
                user=user,
                stop_reason="",
                error_message="",
                first_event_seq=0,
                last_event_seq=0,
                cancel_requested=False,
                runner="",
                agent_pid=0,
                create_time=now(),
                start_time=None,
                end_time=None,
            )
        )
        return turn

    async def cancel_turn(self, key: SessionKey, turn_id: str) -> Turn:
        """Cancel a queued turn at once; ask the agent to cancel a running one (`session/cancel`; the
        runner ends it CANCELLED). An ended turn is returned unchanged. Raises NotFound."""
        turn = await self.records.get_turn(key, turn_id)
        if turn is None:
            raise not_found("turn", key.turn_name(turn_id))
        if turn.state is TurnState.QUEUED:
            turn = await self.records.finish_turn(
                turn,
                state=TurnState.CANCELLED,
                stop_reason="cancelled",
                events=[unsent_notice("cancelled while queued", "queued_message_cancelled")],
                only_if=TurnState.QUEUED,
            )  # a runner may have claimed it meanwhile: then it is RUNNING and cancelled below
        if turn.state is TurnState.RUNNING:
            await self.records.update_turn(key, turn_id, cancel_requested=True)
            live = self.agents.live(key)
            if live is not None:
                await live.cancel()
            return await self.records.get_turn(key, turn_id) or turn
        return turn

    async def set_model(self, key: SessionKey, model: str) -> AgentSession:
        """Record the model the session's next turns use (sent to the agent before the next prompt).
        Raises InvalidArgument (empty, or not a model of the session's agent), NotFound,
        FailedPrecondition (`SESSION_CLOSED`: a closed session runs no more turns)."""
        require(bool(model), "model", "is required")
        session = await self.get(key)
        self._check_model(session.agent, model)
        if session.state is SessionState.CLOSED:
            raise precondition(f"session {key.name} is closed", "SESSION_CLOSED")
        if session.model == model:
            return session
        return await self.records.update_session(key, model=model)

    async def close(self, key: SessionKey) -> AgentSession:
        """Close the session: queued turns are cancelled, a running turn is asked to cancel. Idempotent."""
        session = await self.get(key)
        if session.state is SessionState.CLOSED:
            return session
        for turn in await self.records.turns_in([TurnState.QUEUED, TurnState.RUNNING], key):
            await self.cancel_turn(key, turn.turn_id)
        closed = await self.records.update_session(key, state=SessionState.CLOSED, close_time=now())
        if session.current_turn == "":
            await self.agents.close_session(key)
        return closed

    async def list_events(
        self, key: SessionKey, *, after_seq: int, page_size: int, page_token: str
    ) -> tuple[list[SessionEvent], str]:
        """Events after `after_seq` (or after the token's seq), in log order. Raises NotFound."""
        require(after_seq >= 0, "after_seq", "must not be negative")
        _, limit = offset_page(page_size, "", default=500, maximum=5000, domain=DOMAIN)  # token is a seq
        require(page_token == "" or page_token.isdigit(), "page_token", "is not a token this service issued")
        await self.get(key)
        start = int(page_token) if page_token else after_seq
        events = await self.logs.list_events(key, after_seq=start, limit=limit + 1)
        more = len(events) > limit
        events = events[:limit]
        return events, str(events[-1].seq) if more else ""
