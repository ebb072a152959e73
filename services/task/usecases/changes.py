"""Announce a change of a task inside the transaction that made it: bump the task's version,
record watch changes (task scope, session scopes, per-user states, each user's own scope), publish
the task summary and audit events through the outbox."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from foundry.organization.v1 import audit_event_pb2
from foundry.organization.v1 import events_pb2 as org_events
from foundry.task.v1 import events_pb2
from google.protobuf import struct_pb2
from sqlalchemy.ext.asyncio import AsyncSession

from services.platform import context
from services.platform.watch import record_change
from services.task import convert
from services.task.domain.models import Session, Task, UserTaskState, now
from services.task.domain.rules import computed_status
from services.task.store import queries
from services.task.usecases.deps import Deps

SUMMARY_UPDATED = "task.summary.updated"
AUDIT_ROUTING_KEY = "task.audit.appended"
"""AppendAuditEvent goes out as an event; the organization service binds its audit queue to it."""


def task_scope(task_name: str) -> str:
    return f"task:{task_name}"


def session_scope(session_name: str) -> str:
    return f"session:{session_name}"


def user_states_scope(organization: str, user_id: str) -> str:
    """One user's UserTaskStates of every task of `organization` (WatchUserTaskStates)."""
    return f"user_task_states:{organization}/users/{user_id}"


def actor() -> str:
    """Who causes the work in progress: `users/{id}` or `services/{name}`."""
    who = context.caller()
    if who is None:
        return "services/task"
    return (
        f"users/{who.user_id}" if not who.is_service else f"services/{who.subject.removeprefix('service/')}"
    )


class Audit:
    """One audit entry to append (kind `<entity>.<event>`, payload of plain JSON values)."""

    def __init__(self, kind: str, **payload: Any) -> None:
        self.kind = kind
        self.payload = payload


async def task_changed(
    session: AsyncSession,
    deps: Deps,
    task: Task,
    *,
    sessions: Sequence[Session] | None = None,
    changed_sessions: Iterable[Session] = (),
    audits: Iterable[Audit] = (),
    user_states: Iterable[UserTaskState] = (),
    insert: bool = False,
    previous_status: str | None = None,
) -> list[Session]:
    """Persist `task` (insert or update) with a new version and announce it. Also recomputes the
    status from the sessions (idle/running/error), auditing a transition. Returns the sessions read."""
    if sessions is None:
        sessions = await queries.list_sessions(session, task_id=task.id)
    before = previous_status if previous_status is not None else task.status
    task.status = computed_status(task.status, task.stage, sessions)
    audits = list(audits)
    if before != task.status:
        audits.append(Audit("task.status", **{"from": before, "to": task.status}))
        if task.status != "error":
            task.status_message = ""
    task.version += 1
    task.updated_at = now()
    if insert:
        await queries.insert_task(session, task=task)
    else:
        await queries.update_task(session, task=task)
    shared = convert.task(task, sessions, status=task.status)
    await record_change(session, scope=task_scope(task.name), name=task.name, resource=shared)
    for row in changed_sessions:
        await record_change(
            session, scope=session_scope(row.name), name=row.name, resource=convert.session(row)
        )
    open_ids = [s.id for s in sessions if not s.closed]
    for state in user_states:
        pb = convert.user_task_state(task, state, open_ids)
        await record_change(session, scope=task_scope(task.name), name=pb.name, resource=pb)
        await record_change(
            session, scope=user_states_scope(task.parent, state.user), name=pb.name, resource=pb
        )
        for s_state in state.sessions:
            s_pb = convert.user_session_state(task, s_state)
            await record_change(
                session,
                scope=session_scope(f"{task.name}/sessions/{s_state.session_id}"),
                name=s_pb.name,
                resource=s_pb,
            )
    await deps.outbox.publish(
        session,
        routing_key=SUMMARY_UPDATED,
        message=events_pb2.TaskSummaryChanged(
            name=task.name,
            version=task.version,
            task_summary=convert.task_summary(task, sessions, status=task.status),
        ),
    )
    await append_audit(session, deps, task, audits)
    return list(sessions)


async def append_audit(session: AsyncSession, deps: Deps, task: Task, entries: Sequence[Audit]) -> None:
    """Append audit entries about `task` to the organization's audit log (via the outbox): one
    AppendAuditEvent for all of them, so one change costs the organization service one write."""
    if not entries:
        return
    at, who = convert.ts(now()), actor()
    events = []
    for entry in entries:
        payload = struct_pb2.Struct()
        payload.update(_plain(entry.payload))
        events.append(
            audit_event_pb2.AuditEvent(
                kind=entry.kind,
                repository=task.repository,
                task=task.name,
                branch=task.branch,
                actor=who,
                payload=payload,
                create_time=at,
            )
        )
    message = org_events.AppendAuditEvent(
        organization=task.parent, event_id=uuid.uuid4().hex, audit_event=events[0], audit_events=events[1:]
    )
    await deps.outbox.publish(
        session, routing_key=AUDIT_ROUTING_KEY, message=message, message_id=message.event_id
    )


def _plain(values: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: (v if isinstance(v, (str, int, float, bool)) or v is None else str(v)) for k, v in values.items()
    }
