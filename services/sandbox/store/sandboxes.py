"""Sandboxes, agent sessions and turns: reads, and writes that publish their events in the same transaction.

Routing keys (topic exchange, through the outbox): `sandbox.sandbox.changed` (SandboxChanged),
`sandbox.session.changed` (AgentSessionChanged), `sandbox.session.turn_completed` (TurnCompleted).
Work queues: `<prefix>.sandbox.turn` (RunTurn), `<prefix>.sandbox.git_state` (RefreshGitStateWork).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

from foundry.sandbox.v1 import events_pb2
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.platform import clock
from services.platform.db import Database
from services.platform.db.upsert import insert
from services.platform.outbox import Outbox
from services.sandbox import convert
from services.sandbox.domain import models as m
from services.sandbox.store import rows
from services.sandbox.store.queries import (
    append_events,
    owned_by,
    sandbox_where,
    session_where,
    turn_where,
)
from services.sandbox.store.tables import agent_sessions, sandboxes, session_events, turns

SANDBOX_CHANGED = "sandbox.sandbox.changed"
SESSION_CHANGED = "sandbox.session.changed"
TURN_COMPLETED = "sandbox.session.turn_completed"
# What counts as the agent answering (TurnCompleted.first_output_time).
_AGENT_OUTPUT = tuple(
    k.value
    for k in (
        m.EventKind.AGENT_MESSAGE_CHUNK,
        m.EventKind.AGENT_THOUGHT_CHUNK,
        m.EventKind.PLAN,
        m.EventKind.TOOL_CALL,
    )
)


class Queues:
    """Full names of the service's work queues. With several replicas each has its own pair
    (suffix: its address), since a sandbox's turns and git state can only be worked where its files
    and agents are; every enqueue happens on the owning replica, so it names its own queues."""

    def __init__(self, prefix: str, replica: str = "") -> None:
        suffix = "." + re.sub(r"[^A-Za-z0-9_.-]", "_", replica) if replica else ""
        self.turn = f"{prefix}.sandbox.turn{suffix}"
        self.git_state = f"{prefix}.sandbox.git_state{suffix}"


class SandboxRecords:
    """Reads and writes of sandboxes, sessions and turns. Writes bump the entity's version and
    publish its change event through the outbox in the same transaction."""

    def __init__(self, db: Database, outbox: Outbox, queues: Queues) -> None:
        self.db = db
        self.outbox = outbox
        self.queues = queues

    # -- sandboxes -----------------------------------------------------------------------------

    async def get_sandbox(self, key: m.SandboxKey) -> m.Sandbox | None:
        async with self.db.snapshot() as s:
            row = (await s.execute(select(sandboxes).where(sandbox_where(key)))).first()
        return rows.sandbox(row) if row else None

    async def list_sandboxes(
        self, organization: str, *, show_destroyed: bool, offset: int, limit: int
    ) -> list[m.Sandbox]:
        # Unclaimed warm sandboxes (no task yet) are the pool's, not the organization's to see.
        query = select(sandboxes).where(sandboxes.c.organization == organization, sandboxes.c.task != "")
        if not show_destroyed:
            query = query.where(sandboxes.c.state != m.SandboxState.DESTROYED.value)
        query = (
            query.order_by(sandboxes.c.create_time.desc(), sandboxes.c.sandbox_id).offset(offset).limit(limit)
        )
        async with self.db.snapshot() as s:
            return [rows.sandbox(r) for r in (await s.execute(query)).all()]

    async def insert_sandbox(self, sandbox: m.Sandbox) -> tuple[m.Sandbox, bool]:
        """Insert `sandbox` unless a row with its key exists; returns (row, created)."""
        async with self.db.transaction() as s:
            result = await s.execute(
                insert(s, sandboxes)
                .values(**rows.sandbox_values(sandbox))
                .on_conflict_do_nothing(index_elements=[sandboxes.c.organization, sandboxes.c.sandbox_id])
            )
            created = bool(result.rowcount)  # type: ignore[attr-defined]
            row = (await s.execute(select(sandboxes).where(sandbox_where(sandbox.key)))).one()
            current = rows.sandbox(row)
            if created:
                await self._publish_sandbox(s, current)
        return current, created

    async def update_sandbox(
        self, key: m.SandboxKey, *, refresh_git: bool = False, **changes: Any
    ) -> m.Sandbox:
        """Apply `changes` (column values; `checkout` as a Checkout) and publish SandboxChanged."""
        if "checkout" in changes:
            changes["checkout"] = rows.checkout_json(changes["checkout"])
        if "state" in changes:
            changes["state"] = m.SandboxState(changes["state"]).value
        async with self.db.transaction() as s:
            await s.execute(
                update(sandboxes)
                .where(sandbox_where(key))
                .values(**changes, update_time=clock.now(), version=sandboxes.c.version + 1)
            )
            current = rows.sandbox((await s.execute(select(sandboxes).where(sandbox_where(key)))).one())
            await self._publish_sandbox(s, current)
            if refresh_git:
                await self.enqueue_git_refresh(s, key)
        return current

    async def publish_sandbox(self, s: AsyncSession, sandbox: m.Sandbox) -> None:
        """Publish SandboxChanged in the transaction `s`; nothing for an unclaimed warm sandbox (no
        task: no consumer has anything to do with it until a task claims it)."""
        await self._publish_sandbox(s, sandbox)

    async def _publish_sandbox(self, s: AsyncSession, sandbox: m.Sandbox) -> None:
        if not sandbox.task:
            return
        await self.outbox.publish(
            s,
            routing_key=SANDBOX_CHANGED,
            message=events_pb2.SandboxChanged(
                name=sandbox.key.name, version=sandbox.version, sandbox=convert.sandbox(sandbox)
            ),
        )

    async def enqueue_git_refresh(self, s: AsyncSession, key: m.SandboxKey) -> None:
        await self.outbox.enqueue(
            s,
            queue=self.queues.git_state,
            message=events_pb2.RefreshGitStateWork(name=f"{key.name}/gitState"),
        )

    # -- sessions ------------------------------------------------------------------------------

    async def get_session(self, key: m.SessionKey) -> m.AgentSession | None:
        async with self.db.snapshot() as s:
            row = (await s.execute(select(agent_sessions).where(session_where(key)))).first()
        return rows.session(row) if row else None

    async def list_sessions(self, key: m.SandboxKey) -> list[m.AgentSession]:
        async with self.db.snapshot() as s:
            result = await s.execute(
                select(agent_sessions).where(
                    agent_sessions.c.organization == key.organization,
                    agent_sessions.c.sandbox_id == key.sandbox_id,
                )
            )
            return [rows.session(r) for r in result.all()]

    async def insert_session(self, agent_session: m.AgentSession) -> tuple[m.AgentSession, bool]:
        async with self.db.transaction() as s:
            result = await s.execute(
                insert(s, agent_sessions)
                .values(**rows.session_values(agent_session))
                .on_conflict_do_nothing(
                    index_elements=[
                        agent_sessions.c.organization,
                        agent_sessions.c.sandbox_id,
                        agent_sessions.c.session_id,
                    ]
                )
            )
            created = bool(result.rowcount)  # type: ignore[attr-defined]
            current = rows.session(
                (await s.execute(select(agent_sessions).where(session_where(agent_session.key)))).one()
            )
            if created:
                await self._publish_session(s, current)
        return current, created

    async def update_session(self, key: m.SessionKey, **changes: Any) -> m.AgentSession:
        """Apply `changes` and publish AgentSessionChanged."""
        async with self.db.transaction() as s:
            return await self._update_session(s, key, **changes)

    async def _update_session(self, s: AsyncSession, key: m.SessionKey, **changes: Any) -> m.AgentSession:
        for field in ("state", "permission_policy"):
            if field in changes:
                changes[field] = str(changes[field])
        await s.execute(
            update(agent_sessions)
            .where(session_where(key))
            .values(**changes, update_time=clock.now(), version=agent_sessions.c.version + 1)
        )
        current = rows.session((await s.execute(select(agent_sessions).where(session_where(key)))).one())
        await self._publish_session(s, current)
        return current

    async def _publish_session(self, s: AsyncSession, agent_session: m.AgentSession) -> None:
        await self.outbox.publish(
            s,
            routing_key=SESSION_CHANGED,
            message=events_pb2.AgentSessionChanged(
                name=agent_session.key.name,
                version=agent_session.version,
                agent_session=convert.agent_session(agent_session),
            ),
        )

    # -- turns ---------------------------------------------------------------------------------

    async def get_turn(self, key: m.SessionKey, turn_id: str) -> m.Turn | None:
        async with self.db.snapshot() as s:
            row = (await s.execute(select(turns).where(turn_where(key, turn_id)))).first()
        return rows.turn(row) if row else None

    async def queue_turn(self, turn: m.Turn) -> tuple[m.Turn, bool]:
        """Insert a QUEUED turn at the end of its session's queue and enqueue RunTurn, unless a turn
        with the same id exists (then that one is returned, and nothing is sent)."""
        key = turn.session
        async with self.db.transaction() as s:
            # The session's row lock (PostgreSQL; SQLite serializes writers) makes a concurrent call
            # with the same turn id wait here and then find the turn, instead of both missing it and
            # the second INSERT failing on pk_turns (INTERNAL to a caller re-sending its message).
            await s.execute(select(agent_sessions.c.session_id).where(session_where(key)).with_for_update())
            existing = (await s.execute(select(turns).where(turn_where(key, turn.turn_id)))).first()
            if existing is not None:
                return rows.turn(existing), False
            position = (
                await s.execute(
                    update(agent_sessions)
                    .where(session_where(key))
                    .values(turn_count=agent_sessions.c.turn_count + 1)
                    .returning(agent_sessions.c.turn_count)
                )
            ).scalar_one()
            await s.execute(
                turns.insert().values(
                    organization=key.sandbox.organization,
                    sandbox_id=key.sandbox.sandbox_id,
                    session_id=key.session_id,
                    turn_id=turn.turn_id,
                    position=position,
                    state=m.TurnState.QUEUED.value,
                    text=turn.text,
                    attachments=[dataclasses.asdict(a) for a in turn.attachments],
                    user=turn.user,
                    create_time=turn.create_time,
                    cancel_requested=False,
                    runner="",
                    agent_pid=0,
                )
            )
            await self.outbox.enqueue(s, queue=self.queues.turn, message=events_pb2.RunTurn(name=turn.name))
            # Behind a running or queued turn: shown in the transcript now, in queue order (steering).
            session_row = (await s.execute(select(agent_sessions).where(session_where(key)))).one()
            earlier = select(func.count()).where(
                turn_where(key), turns.c.state == m.TurnState.QUEUED.value, turns.c.position < position
            )
            ahead = int((await s.execute(earlier)).scalar_one()) + (1 if session_row.current_turn else 0)
            if ahead:
                queued = m.NewEvent(
                    m.EventKind.MESSAGE_QUEUED,
                    m.EventSender.CLIENT,
                    turn.text,
                    {"user": turn.user, "ahead": ahead},
                )
                await append_events(s, self.outbox, key, turn.turn_id, [queued])
            created = rows.turn((await s.execute(select(turns).where(turn_where(key, turn.turn_id)))).one())
        return created, True

    async def claim_next_turn(self, key: m.SessionKey, runner: str) -> m.Turn | None:
        """Make the session's oldest queued turn RUNNING and the session's current turn, unless a turn
        is running already, the session cannot run turns, or nothing is queued. Returns the claimed turn."""
        async with self.db.transaction() as s:
            row = (await s.execute(select(agent_sessions).where(session_where(key)))).first()
            if row is None or row.current_turn or not rows.session(row).accepts_turns:
                return None
            head = (
                await s.execute(
                    select(turns)
                    .where(turn_where(key), turns.c.state == m.TurnState.QUEUED.value)
                    .order_by(turns.c.position)
                    .limit(1)
                )
            ).first()
            if head is None:
                return None
            claimed = await s.execute(
                update(agent_sessions)
                .where(session_where(key), agent_sessions.c.current_turn == "")
                .values(current_turn=head.turn_id)
            )
            if not claimed.rowcount:  # type: ignore[attr-defined]
                return None  # another runner won the race
            now = clock.now()
            await s.execute(
                update(turns)
                .where(turn_where(key, head.turn_id))
                .values(state=m.TurnState.RUNNING.value, start_time=now, runner=runner, heartbeat_time=now)
            )
            await self._update_session(s, key, state=m.SessionState.RUNNING, error_message="")
            return rows.turn((await s.execute(select(turns).where(turn_where(key, head.turn_id)))).one())

    async def update_turn(self, key: m.SessionKey, turn_id: str, **changes: Any) -> None:
        async with self.db.transaction() as s:
            await s.execute(update(turns).where(turn_where(key, turn_id)).values(**changes))

    async def finish_turn(
        self,
        turn: m.Turn,
        *,
        state: m.TurnState,
        stop_reason: str = "",
        error: str = "",
        session_state: m.SessionState = m.SessionState.IDLE,
        session_error: str = "",
        events: Sequence[m.NewEvent] = (),
        only_if: m.TurnState | None = None,
    ) -> m.Turn:
        """End `turn`: append `events` (its last log entries), store its outcome, release the session
        (to `session_state`), publish TurnCompleted and AgentSessionChanged and queue a git state
        refresh, all in one transaction. A turn that already ended (or is not in state `only_if`, when
        given) is returned as is."""
        key = turn.session
        async with self.db.transaction() as s:
            row = (await s.execute(select(turns).where(turn_where(key, turn.turn_id)))).one()
            if m.TurnState(row.state).ended or (only_if is not None and row.state != only_if.value):
                return rows.turn(row)
            await append_events(s, self.outbox, key, turn.turn_id, events)
            await s.execute(
                update(turns)
                .where(turn_where(key, turn.turn_id))
                .values(state=state.value, stop_reason=stop_reason, error_message=error, end_time=clock.now())
            )
            ended = rows.turn((await s.execute(select(turns).where(turn_where(key, turn.turn_id)))).one())
            session_row = (await s.execute(select(agent_sessions).where(session_where(key)))).one()
            changes: dict[str, Any] = {}
            if session_row.current_turn == turn.turn_id:
                changes["current_turn"] = ""
                if session_row.state == m.SessionState.RUNNING.value:
                    changes.update(state=session_state, error_message=session_error)
            current = await self._update_session(s, key, **changes)
            first_output = await s.scalar(
                select(func.min(session_events.c.create_time)).where(
                    session_events.c.organization == key.sandbox.organization,
                    session_events.c.sandbox_id == key.sandbox.sandbox_id,
                    session_events.c.session_id == key.session_id,
                    session_events.c.seq.between(ended.first_event_seq, ended.last_event_seq),  # key range
                    session_events.c.turn_id == turn.turn_id,
                    session_events.c.kind.in_(_AGENT_OUTPUT),
                )
            )
            await self.outbox.publish(
                s,
                routing_key=TURN_COMPLETED,
                message=events_pb2.TurnCompleted(
                    name=key.name,
                    version=current.version,
                    turn=convert.turn(ended),
                    first_output_time=convert.ts(first_output),
                ),
            )
            if ended.start_time is not None:
                await self.enqueue_git_refresh(s, key.sandbox)
        return ended

    async def turns_in(
        self, states: Sequence[m.TurnState], key: m.SessionKey | None = None, *, replica: str | None = None
    ) -> list[m.Turn]:
        """Turns in `states` (of one session, or all; of the sandboxes `replica` owns), in queue order."""
        query = select(turns).where(turns.c.state.in_([st.value for st in states]))
        if key is not None:
            query = query.where(turn_where(key))
        if replica is not None:
            query = query.where(owned_by(turns, replica))
        async with self.db.snapshot() as s:
            return [rows.turn(r) for r in (await s.execute(query.order_by(turns.c.position))).all()]

    async def kick(self, key: m.SessionKey) -> bool:
        """Enqueue a RunTurn for the session's oldest queued turn when no turn holds the session
        (after a crash released it). Returns True when a message was enqueued."""
        async with self.db.transaction() as s:
            row = (await s.execute(select(agent_sessions.c.current_turn).where(session_where(key)))).first()
            head = (
                await s.execute(
                    select(turns.c.turn_id)
                    .where(turn_where(key), turns.c.state == "queued")
                    .order_by(turns.c.position)
                    .limit(1)
                )
            ).first()
            if row is None or row.current_turn or head is None:
                return False
            await self.outbox.enqueue(
                s, queue=self.queues.turn, message=events_pb2.RunTurn(name=key.turn_name(head.turn_id))
            )
            return True
