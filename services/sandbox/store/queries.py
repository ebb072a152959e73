"""Shared query helpers of the sandbox store: key predicates and the event-log append."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from foundry.sandbox.v1 import events_pb2
from sqlalchemy import and_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.platform import clock
from services.platform.outbox import Outbox
from services.platform.watch import record_change
from services.sandbox import convert
from services.sandbox.domain import models as m
from services.sandbox.store.tables import agent_sessions, sandboxes, session_events, turns

EVENTS_APPENDED = "sandbox.session.events_appended"


def events_scope(key: m.SessionKey) -> str:
    """The watch scope of a session's event log."""
    return f"session_events:{key.name}"


def sandbox_where(key: m.SandboxKey) -> Any:
    return and_(sandboxes.c.organization == key.organization, sandboxes.c.sandbox_id == key.sandbox_id)


def owned_by(table: Any, replica: str) -> Any:
    """Rows of `table` (keyed by organization + sandbox_id) whose sandbox the replica `replica` owns."""
    return (
        select(sandboxes.c.sandbox_id)
        .where(
            sandboxes.c.organization == table.c.organization,
            sandboxes.c.sandbox_id == table.c.sandbox_id,
            sandboxes.c.replica == replica,
        )
        .exists()
    )


def session_where(key: m.SessionKey) -> Any:
    return and_(
        agent_sessions.c.organization == key.sandbox.organization,
        agent_sessions.c.sandbox_id == key.sandbox.sandbox_id,
        agent_sessions.c.session_id == key.session_id,
    )


def turn_where(key: m.SessionKey, turn_id: str | None = None) -> Any:
    clause = and_(
        turns.c.organization == key.sandbox.organization,
        turns.c.sandbox_id == key.sandbox.sandbox_id,
        turns.c.session_id == key.session_id,
    )
    return clause if turn_id is None else and_(clause, turns.c.turn_id == turn_id)


async def append_events(
    s: AsyncSession, outbox: Outbox, key: m.SessionKey, turn_id: str, events: Sequence[m.NewEvent]
) -> list[m.SessionEvent]:
    """Append `events` to the session's log inside the caller's transaction, numbered after its last
    event (the session row's `last_event_seq`, bumped under its row lock, so numbers have no gaps).

    Also records one watch change per event, moves the turn's first/last seq and heartbeat, and
    publishes one SessionEventsAppended for the batch.
    """
    if not events:
        return []
    last = (
        await s.execute(
            update(agent_sessions)
            .where(session_where(key))
            .values(last_event_seq=agent_sessions.c.last_event_seq + len(events))
            .returning(agent_sessions.c.last_event_seq)
        )
    ).scalar_one()
    first = int(last) - len(events) + 1
    now = clock.now()
    appended = [
        m.SessionEvent(key, first + i, now, e.kind, e.sender, turn_id, e.text, e.payload)
        for i, e in enumerate(events)
    ]
    await s.execute(
        session_events.insert(),
        [
            {
                "organization": key.sandbox.organization,
                "sandbox_id": key.sandbox.sandbox_id,
                "session_id": key.session_id,
                "seq": e.seq,
                "create_time": e.create_time,
                "kind": e.kind.value,
                "sender": e.sender.value,
                "turn_id": turn_id,
                "text": e.text,
                "payload": e.payload,
            }
            for e in appended
        ],
    )
    for e in appended:
        await record_change(s, scope=events_scope(key), name=e.name, resource=convert.session_event(e))
    if turn_id:
        row = (await s.execute(select(turns.c.first_event_seq).where(turn_where(key, turn_id)))).first()
        if row is not None:
            values: dict[str, Any] = {"last_event_seq": last, "heartbeat_time": now}
            if not row.first_event_seq:
                values["first_event_seq"] = first
            await s.execute(update(turns).where(turn_where(key, turn_id)).values(**values))
    await outbox.publish(
        s,
        routing_key=EVENTS_APPENDED,
        message=events_pb2.SessionEventsAppended(
            name=key.name,
            version=int(last),
            first_seq=first,
            last_seq=int(last),
            turn=key.turn_name(turn_id) if turn_id else "",
        ),
    )
    return appended
