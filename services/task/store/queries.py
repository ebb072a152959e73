"""Reads and writes of the task service's tables. Keyword-only functions taking an open session;
they return and accept `services.task.domain.models` records."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.platform.clock import utc
from services.task.domain.models import (
    INIT_STATUSES,
    Owner,
    QueuedMessage,
    Session,
    Task,
    UserSessionState,
    UserTaskState,
)
from services.task.store.tables import messages, sessions, tasks, user_session_states, user_task_states

_OWNER_COLUMNS = ("owner_user", "owner_login", "owner_email", "owner_avatar_url", "owner_updated_at")


def _task(row: Any) -> Task:
    data = dict(row._mapping)
    owner = None
    if data.get("owner_user"):
        owner = Owner(
            user=data["owner_user"],
            login=data["owner_login"],
            email=data["owner_email"],
            avatar_url=data["owner_avatar_url"],
            updated_at=utc(data["owner_updated_at"]),
        )
    for key in _OWNER_COLUMNS:
        data.pop(key, None)
    for key in (
        "stage_updated_at",
        "lease_until",
        "created_at",
        "updated_at",
        "ended_at",
        "publish_requested_at",
        "publish_updated_at",
    ):
        data[key] = utc(data[key])
    return Task(owner=owner, **data)


def _task_values(task: Task) -> dict[str, Any]:
    values = {k: v for k, v in vars(task).items() if k != "owner"}
    o = task.owner
    values.update(
        owner_user=o.user if o else None,
        owner_login=o.login if o else "",
        owner_email=o.email if o else "",
        owner_avatar_url=o.avatar_url if o else "",
        owner_updated_at=o.updated_at if o else None,
    )
    return values


def _session(row: Any) -> Session:
    data = dict(row._mapping)
    for key in ("thinking_since", "created_at", "updated_at", "closed_at", "stop_requested_at", "command_at"):
        data[key] = utc(data[key])
    return Session(**data)


async def insert_task(session: AsyncSession, *, task: Task) -> None:
    await session.execute(insert(tasks).values(**_task_values(task)))


async def update_task(session: AsyncSession, *, task: Task) -> None:
    """Write every column of `task` (the caller holds the row: it read it in this transaction)."""
    values = _task_values(task)
    values.pop("id")
    await session.execute(update(tasks).where(tasks.c.id == task.id).values(**values))


async def get_task(
    session: AsyncSession, *, task_id: str, organization: str | None = None, lock: bool = False
) -> Task | None:
    """The task, or None. `lock=True` takes the row lock (`SELECT … FOR UPDATE` on PostgreSQL;
    SQLite's write transaction already serializes writers)."""
    query = select(tasks).where(tasks.c.id == task_id)
    if organization is not None:
        query = query.where(tasks.c.organization == organization)
    if lock:
        query = query.with_for_update()
    row = (await session.execute(query)).first()
    return _task(row) if row else None


async def find_task_by_request(session: AsyncSession, *, organization: str, request_id: str) -> Task | None:
    row = (
        await session.execute(
            select(tasks).where(tasks.c.organization == organization, tasks.c.request_id == request_id)
        )
    ).first()
    return _task(row) if row else None


async def find_task_by_branch(
    session: AsyncSession, *, repository: str, branch: str, live_only: bool = True
) -> Task | None:
    query = select(tasks).where(tasks.c.repository == repository, tasks.c.branch == branch)
    if live_only:
        query = query.where(tasks.c.status.not_in(("archived", "killed")))
    row = (await session.execute(query.order_by(tasks.c.created_at.desc()).limit(1))).first()
    return _task(row) if row else None


async def list_tasks(
    session: AsyncSession,
    *,
    organization: str,
    repository: str = "",
    show_ended: bool = False,
    offset: int = 0,
    limit: int = 50,
) -> list[Task]:
    """Tasks of an organization, most recently updated first."""
    query = select(tasks).where(tasks.c.organization == organization)
    if repository:
        query = query.where(tasks.c.repository == repository)
    if not show_ended:
        query = query.where(tasks.c.status.not_in(("archived", "killed")))
    query = query.order_by(tasks.c.updated_at.desc(), tasks.c.id).offset(offset).limit(limit)
    return [_task(r) for r in (await session.execute(query)).all()]


async def unfinished_provisioning(
    session: AsyncSession, *, lease_expired_before: dt.datetime | None = None
) -> list[Task]:
    """Tasks whose provisioning has not finished (status init_* before complete, stage not ready/error).

    With `lease_expired_before`, only those nobody holds a live lease on (no lease, or one that
    ended before that time)."""
    query = select(tasks).where(
        tasks.c.status.in_(INIT_STATUSES[:-1]), tasks.c.stage.not_in(("ready", "error"))
    )
    if lease_expired_before is not None:
        query = query.where(or_(tasks.c.lease_until.is_(None), tasks.c.lease_until < lease_expired_before))
    return [_task(r) for r in (await session.execute(query)).all()]


async def publishing_tasks(
    session: AsyncSession, *, lease_expired_before: dt.datetime | None = None
) -> list[Task]:
    """Tasks whose pull request publication is queued or running (with `lease_expired_before`,
    only those nobody holds a live lease on)."""
    query = select(tasks).where(tasks.c.publish_state == "publishing")
    if lease_expired_before is not None:
        query = query.where(or_(tasks.c.lease_until.is_(None), tasks.c.lease_until < lease_expired_before))
    return [_task(r) for r in (await session.execute(query)).all()]


async def tasks_in_commands(session: AsyncSession) -> list[Task]:
    """Tasks left in the middle of an archive or kill flow."""
    query = select(tasks).where(tasks.c.status.like("archive_%") | tasks.c.status.like("kill_%"))
    return [_task(r) for r in (await session.execute(query)).all()]


async def set_lease(
    session: AsyncSession,
    *,
    task_id: str,
    owner: str | None,
    until: dt.datetime | None,
    expected_owner: str | None = None,
) -> bool:
    """Set (or clear) the lease; with `expected_owner`, only if that claim holds it. True if written."""
    query = update(tasks).where(tasks.c.id == task_id)
    if expected_owner is not None:
        query = query.where(tasks.c.lease_owner == expected_owner)
    result = await session.execute(query.values(lease_owner=owner, lease_until=until))
    return bool(result.rowcount)  # type: ignore[attr-defined]


# -- sessions --------------------------------------------------------------------------------------


async def insert_session(session: AsyncSession, *, row: Session) -> None:
    await session.execute(insert(sessions).values(**vars(row)))


async def update_session(session: AsyncSession, *, row: Session) -> None:
    values = dict(vars(row))
    values.pop("id")
    await session.execute(update(sessions).where(sessions.c.id == row.id).values(**values))


async def get_session(session: AsyncSession, *, task_id: str, session_id: str) -> Session | None:
    row = (
        await session.execute(
            select(sessions).where(sessions.c.id == session_id, sessions.c.task_id == task_id)
        )
    ).first()
    return _session(row) if row else None


async def sessions_with_pending_commands(
    session: AsyncSession, *, enqueued_before: dt.datetime
) -> list[Session]:
    """Sessions with a session command not yet done (an agent session to close, a model to apply, a
    stop whose turns are still running) that was last enqueued before `enqueued_before` (or never)."""
    c = sessions.c
    pending = or_(
        and_(c.closed_at.is_not(None), c.agent_closed.is_(False)),
        and_(c.closed_at.is_(None), c.model != c.agent_model),
        and_(c.closed_at.is_(None), c.stop_requested_at.is_not(None), c.status == "running"),
    )
    query = select(sessions).where(
        c.sandbox_session != "", pending, or_(c.command_at.is_(None), c.command_at < enqueued_before)
    )
    return [_session(r) for r in (await session.execute(query.order_by(c.id))).all()]


async def find_session_by_request(session: AsyncSession, *, task_id: str, request_id: str) -> Session | None:
    row = (
        await session.execute(
            select(sessions).where(sessions.c.task_id == task_id, sessions.c.request_id == request_id)
        )
    ).first()
    return _session(row) if row else None


async def list_sessions(session: AsyncSession, *, task_id: str, include_closed: bool = True) -> list[Session]:
    """Sessions of a task in creation order."""
    query = select(sessions).where(sessions.c.task_id == task_id)
    if not include_closed:
        query = query.where(sessions.c.closed_at.is_(None))
    return [_session(r) for r in (await session.execute(query.order_by(sessions.c.position))).all()]


async def next_session_position(session: AsyncSession, *, task_id: str) -> int:
    value = (
        await session.execute(select(func.max(sessions.c.position)).where(sessions.c.task_id == task_id))
    ).scalar()
    return int(value or 0) + 1


# -- messages --------------------------------------------------------------------------------------


def _message(row: Any) -> QueuedMessage:
    data = dict(row._mapping)
    data["created_at"] = utc(data["created_at"])
    data["attachments"] = list(data["attachments"] or [])
    return QueuedMessage(**data)


async def insert_message(session: AsyncSession, *, message: QueuedMessage) -> None:
    await session.execute(insert(messages).values(**vars(message)))


async def get_message(session: AsyncSession, *, message_id: str) -> QueuedMessage | None:
    row = (await session.execute(select(messages).where(messages.c.id == message_id))).first()
    return _message(row) if row else None


async def find_message_by_request(
    session: AsyncSession, *, session_id: str, request_id: str
) -> QueuedMessage | None:
    row = (
        await session.execute(
            select(messages).where(messages.c.session_id == session_id, messages.c.request_id == request_id)
        )
    ).first()
    return _message(row) if row else None


async def set_message_state(
    session: AsyncSession, *, message_id: str, state: str, expected: str | None = None
) -> bool:
    """Set a message's state (only from `expected` when given); True when a row changed."""
    query = update(messages).where(messages.c.id == message_id)
    if expected is not None:
        query = query.where(messages.c.state == expected)
    result = await session.execute(query.values(state=state))
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def held_messages(session: AsyncSession, *, session_id: str) -> list[QueuedMessage]:
    """Messages of a session held until it is ready (a task's first prompt), oldest first."""
    query = (
        select(messages)
        .where(messages.c.session_id == session_id, messages.c.state == "held")
        .order_by(messages.c.created_at, messages.c.id)
    )
    return [_message(r) for r in (await session.execute(query)).all()]


async def open_messages(session: AsyncSession, *, session_id: str) -> list[QueuedMessage]:
    """Messages of a session whose turn has not ended, oldest first."""
    query = (
        select(messages)
        .where(messages.c.session_id == session_id, messages.c.state.in_(("queued", "delivered")))
        .order_by(messages.c.created_at, messages.c.id)
    )
    return [_message(r) for r in (await session.execute(query)).all()]


# -- per-user state --------------------------------------------------------------------------------


async def get_user_task_state(session: AsyncSession, *, task_id: str, user_id: str) -> UserTaskState:
    """The user's state of a task (empty when the user has none yet)."""
    row = (
        await session.execute(
            select(user_task_states).where(
                user_task_states.c.task_id == task_id, user_task_states.c.user_id == user_id
            )
        )
    ).first()
    state = UserTaskState(task_id=task_id, user=user_id)
    if row is not None:
        state.active_session = row.active_session
        state.updated_at = utc(row.updated_at) or state.updated_at
    rows = (
        await session.execute(
            select(user_session_states).where(
                user_session_states.c.task_id == task_id, user_session_states.c.user_id == user_id
            )
        )
    ).all()
    state.sessions = [_user_session(r) for r in rows]
    return state


def _user_session(row: Any) -> UserSessionState:
    return UserSessionState(
        session_id=row.session_id,
        user=row.user_id,
        unread=bool(row.unread),
        draft_text=row.draft_text,
        draft_attachments=list(row.draft_attachments or []),
        draft_updated_at=utc(row.draft_updated_at),
        updated_at=utc(row.updated_at) or row.updated_at,
    )


async def users_with_state(session: AsyncSession, *, task_id: str) -> list[str]:
    """Every user that has a state of the task (its viewers)."""
    rows = (
        await session.execute(select(user_task_states.c.user_id).where(user_task_states.c.task_id == task_id))
    ).all()
    return [r.user_id for r in rows]


async def put_user_task_state(
    session: AsyncSession, *, task_id: str, user_id: str, active_session: str, at: dt.datetime
) -> None:
    exists = (
        await session.execute(
            select(user_task_states.c.task_id).where(
                user_task_states.c.task_id == task_id, user_task_states.c.user_id == user_id
            )
        )
    ).first()
    if exists:
        await session.execute(
            update(user_task_states)
            .where(user_task_states.c.task_id == task_id, user_task_states.c.user_id == user_id)
            .values(active_session=active_session, updated_at=at)
        )
    else:
        await session.execute(
            insert(user_task_states).values(
                task_id=task_id, user_id=user_id, active_session=active_session, updated_at=at
            )
        )


async def put_user_session_state(session: AsyncSession, *, task_id: str, state: UserSessionState) -> None:
    key = and_(
        user_session_states.c.session_id == state.session_id, user_session_states.c.user_id == state.user
    )
    values = {
        "task_id": task_id,
        "unread": state.unread,
        "draft_text": state.draft_text,
        "draft_attachments": state.draft_attachments,
        "draft_updated_at": state.draft_updated_at,
        "updated_at": state.updated_at,
    }
    if (await session.execute(select(user_session_states.c.session_id).where(key))).first():
        await session.execute(update(user_session_states).where(key).values(**values))
    else:
        await session.execute(
            insert(user_session_states).values(session_id=state.session_id, user_id=state.user, **values)
        )


async def delete_user_session_states(session: AsyncSession, *, session_id: str) -> None:
    await session.execute(delete(user_session_states).where(user_session_states.c.session_id == session_id))


async def sessions_of(session: AsyncSession, *, task_ids: Sequence[str]) -> dict[str, list[Session]]:
    """Open sessions of several tasks, keyed by task id, each in creation order."""
    if not task_ids:
        return {}
    query = (
        select(sessions)
        .where(sessions.c.task_id.in_(list(task_ids)), sessions.c.closed_at.is_(None))
        .order_by(sessions.c.task_id, sessions.c.position)
    )
    out: dict[str, list[Session]] = {tid: [] for tid in task_ids}
    for row in (await session.execute(query)).all():
        out[row.task_id].append(_session(row))
    return out
