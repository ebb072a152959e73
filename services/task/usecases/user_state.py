"""Per-user task state (active tab, unread, draft): only the caller's own."""

from __future__ import annotations

from typing import Any

from services.platform.errors import PermissionDenied
from services.platform.watch import record_change
from services.task import convert
from services.task.domain import names
from services.task.domain.errors import DOMAIN, SessionNotFound, TaskNotFound, require
from services.task.domain.models import Task, UserSessionState, UserTaskState, now
from services.task.store import queries
from services.task.usecases.changes import session_scope, task_scope, user_states_scope
from services.task.usecases.deps import Deps
from services.task.usecases.tasks import caller_user_id


def _own(user: str) -> str:
    me = caller_user_id()
    if not me:
        raise PermissionDenied("only users have task state", reason="NOT_A_USER", domain=DOMAIN)
    if user not in ("me", me):
        raise PermissionDenied(
            "a user may only read and write their own state", reason="NOT_YOUR_STATE", domain=DOMAIN
        )
    return me


async def get(deps: Deps, name: str) -> tuple[Task, UserTaskState]:
    org, task_id, user = names.user_task_state(name)
    await deps.membership.require(f"organizations/{org}")
    me = _own(user)
    async with deps.db.snapshot() as session:
        task = await queries.get_task(session, task_id=task_id, organization=org)
        if task is None:
            raise TaskNotFound(f"organizations/{org}/tasks/{task_id}")
        return task, await queries.get_user_task_state(session, task_id=task_id, user_id=me)


async def set_active(deps: Deps, name: str, active_session: str) -> tuple[Task, UserTaskState]:
    """Set the caller's active tab (`…/sessions/{session}`, or "" for the first open one)."""
    org, task_id, user = names.user_task_state(name, "user_task_state.name")
    session_id = ""
    if active_session:
        s_org, s_task, session_id = names.session(active_session, "user_task_state.active_session")
        require(
            (s_org, s_task) == (org, task_id),
            "user_task_state.active_session",
            "must be a session of the task",
        )
    await deps.membership.require(f"organizations/{org}")
    me = _own(user)
    async with deps.db.transaction() as session:
        task = await queries.get_task(session, task_id=task_id, organization=org)
        if task is None:
            raise TaskNotFound(f"organizations/{org}/tasks/{task_id}")
        if session_id and await queries.get_session(session, task_id=task_id, session_id=session_id) is None:
            raise SessionNotFound(active_session)
        await queries.put_user_task_state(
            session, task_id=task_id, user_id=me, active_session=session_id, at=now()
        )
        state = await queries.get_user_task_state(session, task_id=task_id, user_id=me)
        pb = convert.user_task_state(task, state)
        await record_change(session, scope=task_scope(task.name), name=pb.name, resource=pb)
        await record_change(session, scope=user_states_scope(task.parent, me), name=pb.name, resource=pb)
    return task, state


async def update_session_state(
    deps: Deps,
    name: str,
    *,
    unread: bool | None,
    draft_text: str | None,
    draft_attachments: list[dict[str, Any]] | None,
) -> tuple[Task, UserSessionState]:
    """Write the caller's unread flag and/or draft of one session."""
    org, task_id, session_id, user = names.user_session_state(name, "user_session_state.name")
    if draft_text is not None:
        require(
            len(draft_text) <= 200_000, "user_session_state.draft.text", "must be at most 200000 characters"
        )
    await deps.membership.require(f"organizations/{org}")
    me = _own(user)
    async with deps.db.transaction() as session:
        task = await queries.get_task(session, task_id=task_id, organization=org)
        if task is None:
            raise TaskNotFound(f"organizations/{org}/tasks/{task_id}")
        if await queries.get_session(session, task_id=task_id, session_id=session_id) is None:
            raise SessionNotFound(f"{task.name}/sessions/{session_id}")
        state = await queries.get_user_task_state(session, task_id=task_id, user_id=me)
        own = next((s for s in state.sessions if s.session_id == session_id), None) or UserSessionState(
            session_id, me
        )
        at = now()
        if unread is not None:
            own.unread = unread
        if draft_text is not None:
            own.draft_text, own.draft_updated_at = draft_text, at
        if draft_attachments is not None:
            own.draft_attachments, own.draft_updated_at = draft_attachments, at
        own.updated_at = at
        await queries.put_user_session_state(session, task_id=task_id, state=own)
        full = await queries.get_user_task_state(session, task_id=task_id, user_id=me)
        pb = convert.user_task_state(task, full)
        await record_change(session, scope=task_scope(task.name), name=pb.name, resource=pb)
        await record_change(session, scope=user_states_scope(task.parent, me), name=pb.name, resource=pb)
        s_pb = convert.user_session_state(task, own)
        await record_change(
            session, scope=session_scope(f"{task.name}/sessions/{session_id}"), name=s_pb.name, resource=s_pb
        )
    return task, own
