"""Reads and writes of the task service's tables. Keyword-only functions taking an open session;
they return and accept `services.task.domain.models` records. The hot reads (`task_detail`,
`task_page`) take the `Database` instead: one prebuilt statement each (`services.platform.db.reads`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Integer, and_, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from services.platform.db import Database
from services.platform.db.reads import Read
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
    return _task_from(dict(row._mapping))


def _task_from(data: dict[str, Any]) -> Task:
    owner = None
    if data.get("owner_user"):
        owner = Owner(
            user=data["owner_user"],
            login=data["owner_login"],
            email=data["owner_email"],
            avatar_url=data["owner_avatar_url"],
            updated_at=data["owner_updated_at"],
        )
    for key in _OWNER_COLUMNS:
        data.pop(key, None)
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
    return _session_from(dict(row._mapping))


def _session_from(data: dict[str, Any]) -> Session:
    return Session(**data)


# Writes of whole rows: one statement built once, values passed as parameters (no statement, bind
# parameters and cache key built per call from ~50 values, which was most of a CreateTask's CPU).
_INSERT_TASK = insert(tasks)
_UPDATE_TASK = update(tasks).where(tasks.c.id == bindparam("row_id"))
_INSERT_SESSION = insert(sessions)
_UPDATE_SESSION = update(sessions).where(sessions.c.id == bindparam("row_id"))
_INSERT_MESSAGE = insert(messages)


async def insert_task(session: AsyncSession, *, task: Task) -> None:
    await session.execute(_INSERT_TASK, _task_values(task))


async def update_task(session: AsyncSession, *, task: Task) -> None:
    """Write every column of `task` (the caller holds the row: it read it in this transaction)."""
    values = _task_values(task)
    values["row_id"] = values.pop("id")
    await session.execute(_UPDATE_TASK, values)


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


_TASK_KEYS = tuple(tasks.c.keys())
_SESSION_KEYS = tuple(sessions.c.keys())
_N_TASK, _N_SESSION = len(_TASK_KEYS), len(_SESSION_KEYS)

# GetTask: the task, its sessions in order and the caller's unread flag of each, in one statement
# (one row per session; one row with NULL session columns for a task without sessions).
_DETAIL = Read(
    select(tasks, *(c.label(f"session_{c.key}") for c in sessions.c), user_session_states.c.unread)
    .select_from(
        tasks.outerjoin(sessions, sessions.c.task_id == tasks.c.id).outerjoin(
            user_session_states,
            and_(
                user_session_states.c.session_id == sessions.c.id,
                user_session_states.c.user_id == bindparam("user_id"),
            ),
        )
    )
    .where(tasks.c.id == bindparam("task_id"), tasks.c.organization == bindparam("organization"))
    .order_by(sessions.c.position),
    point=True,
)


class TaskDetail:
    """GetTask's read as read: `rows` (one per session, the task's columns repeated, as the driver
    returned them) compare equal exactly when the task, its sessions and the caller's unread flags
    are unchanged, which lets the servicer reuse the response it built from equal rows without
    converting any value (`records()` converts and builds the records)."""

    __slots__ = ("_convert", "rows", "user_id")

    def __init__(
        self,
        rows: Sequence[Sequence[Any]],
        user_id: str,
        convert: Callable[[], list[list[Any]]] | None = None,
    ) -> None:
        self.rows, self.user_id, self._convert = rows, user_id, convert

    @property
    def weight(self) -> int:
        """Bytes held by the largest values (git state, pull request), for bounding a cache."""
        first = self.rows[0]
        return len(first[_GIT_STATE] or b"") + len(first[_PULL_REQUEST] or b"")

    def records(self) -> tuple[Task, list[Session], frozenset[str]]:
        """The task, all its sessions (creation order) and the ids of those the caller has unread."""
        rows = self._convert() if self._convert is not None else self.rows
        task = _task_from(dict(zip(_TASK_KEYS, rows[0][:_N_TASK], strict=True)))
        found: list[Session] = []
        unread: set[str] = set()
        end = _N_TASK + _N_SESSION
        for row in rows:
            if row[_N_TASK] is None:  # no sessions
                continue
            found.append(_session_from(dict(zip(_SESSION_KEYS, row[_N_TASK:end], strict=True))))
            if self.user_id and row[end]:
                unread.add(row[_N_TASK])
        return task, found, frozenset(unread)


_GIT_STATE, _PULL_REQUEST = _TASK_KEYS.index("git_state"), _TASK_KEYS.index("pull_request")


async def task_detail(db: Database, *, task_id: str, organization: str, user_id: str) -> TaskDetail | None:
    """The task, all its sessions and `user_id`'s unread flags ("": a service caller, none), read in
    one statement; None when there is no such task."""
    fetched = await db.fetch_raw(_DETAIL, task_id=task_id, organization=organization, user_id=user_id)
    return TaskDetail(fetched.raw, user_id, fetched.rows) if fetched.raw else None


# CreateTask's retry check: the task created under this request id, with its sessions, in one statement.
_BY_REQUEST = Read(
    select(tasks, *(c.label(f"session_{c.key}") for c in sessions.c))
    .select_from(tasks.outerjoin(sessions, sessions.c.task_id == tasks.c.id))
    .where(tasks.c.organization == bindparam("organization"), tasks.c.request_id == bindparam("request_id"))
    .order_by(sessions.c.position),
    point=True,
)


async def task_by_request(
    db: Database, *, organization: str, request_id: str
) -> tuple[Task, list[Session]] | None:
    """Like `find_task_by_request` + `list_sessions` (creation order), read in one statement."""
    rows = await db.fetch(_BY_REQUEST, organization=organization, request_id=request_id)
    if not rows:
        return None
    task = _task_from(dict(zip(_TASK_KEYS, rows[0][:_N_TASK], strict=True)))
    end = _N_TASK + _N_SESSION
    found = [
        _session_from(dict(zip(_SESSION_KEYS, row[_N_TASK:end], strict=True)))
        for row in rows
        if row[_N_TASK] is not None
    ]
    return task, found


def _page_read(*, by_repository: bool, show_ended: bool) -> Read:
    query = select(tasks).where(tasks.c.organization == bindparam("organization"))
    if by_repository:
        query = query.where(tasks.c.repository == bindparam("repository"))
    if not show_ended:
        query = query.where(tasks.c.status != "archived", tasks.c.status != "killed")
    page = (
        query.order_by(tasks.c.updated_at.desc(), tasks.c.id)
        .offset(bindparam("offset", type_=Integer))
        .limit(bindparam("limit", type_=Integer))
        .subquery("page")
    )
    open_sessions = and_(sessions.c.task_id == page.c.id, sessions.c.closed_at.is_(None))
    return Read(
        select(page, *(c.label(f"session_{c.key}") for c in sessions.c))
        .select_from(page.outerjoin(sessions, open_sessions))
        .order_by(page.c.updated_at.desc(), page.c.id, sessions.c.position)
    )


# ListTasks: a page of tasks with their open sessions, in one statement (one row per open session).
_PAGES = {(r, e): _page_read(by_repository=r, show_ended=e) for r in (False, True) for e in (False, True)}


async def task_page(
    db: Database,
    *,
    organization: str,
    repository: str = "",
    show_ended: bool = False,
    offset: int,
    limit: int,
) -> list[tuple[Task, list[Session]]]:
    """Like `list_tasks` + `sessions_of` (tasks most recently updated first, each with its open
    sessions in creation order), read in one statement."""
    params: dict[str, Any] = {"organization": organization, "offset": offset, "limit": limit}
    if repository:
        params["repository"] = repository
    rows = await db.fetch(_PAGES[(bool(repository), show_ended)], **params)
    out: list[tuple[Task, list[Session]]] = []
    end = _N_TASK + _N_SESSION
    for row in rows:
        task_id = row[0]
        if not out or out[-1][0].id != task_id:
            out.append((_task_from(dict(zip(_TASK_KEYS, row[:_N_TASK], strict=True))), []))
        if row[_N_TASK] is not None:
            out[-1][1].append(_session_from(dict(zip(_SESSION_KEYS, row[_N_TASK:end], strict=True))))
    return out


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


# Equalities rather than IN lists: a prebuilt Read takes no expanding parameter.
_PROVISIONING = and_(
    or_(*(tasks.c.status == s for s in INIT_STATUSES[:-1])),
    tasks.c.stage != "ready",
    tasks.c.stage != "error",
)
_PUBLISHING = tasks.c.publish_state == "publishing"


def _unleased(before: Any) -> Any:
    return or_(tasks.c.lease_until.is_(None), tasks.c.lease_until < before)


def _lapsed(before: Any) -> Any:
    """Leased by a replica whose lease ended before `before` (it died or stalled holding it)."""
    return and_(tasks.c.lease_owner.is_not(None), _unleased(before))


async def unfinished_provisioning(
    session: AsyncSession, *, lease_expired_before: dt.datetime | None = None, only_stalled: bool = False
) -> list[Task]:
    """Tasks whose provisioning has not finished (status init_* before complete, stage not ready/error).

    With `lease_expired_before`, only those nobody holds a live lease on (no lease, or one that
    ended before that time); with `only_stalled` too, only those whose lease lapsed."""
    query = select(tasks).where(_PROVISIONING)
    if lease_expired_before is not None:
        lease = _lapsed if only_stalled else _unleased
        query = query.where(lease(lease_expired_before))
    return [_task(r) for r in (await session.execute(query)).all()]


async def publishing_tasks(
    session: AsyncSession, *, lease_expired_before: dt.datetime | None = None, only_stalled: bool = False
) -> list[Task]:
    """Tasks whose pull request publication is queued or running (with `lease_expired_before`,
    only those nobody holds a live lease on; with `only_stalled` too, only those whose lease lapsed)."""
    query = select(tasks).where(_PUBLISHING)
    if lease_expired_before is not None:
        lease = _lapsed if only_stalled else _unleased
        query = query.where(lease(lease_expired_before))
    return [_task(r) for r in (await session.execute(query)).all()]


# The stall sweep's check, every STALL_SWEEP_SECONDS on every replica: one statement, no
# transaction, no rows built; the sweep opens a transaction only when it finds something.
_ANY_STALLED = Read(
    select(tasks.c.id).where(or_(_PROVISIONING, _PUBLISHING), _lapsed(bindparam("at"))).limit(1)
)


async def any_stalled_task(db: Database, *, at: dt.datetime) -> bool:
    """Whether some task's provisioning or publication is held by a lease that ended before `at`."""
    return bool(await db.fetch(_ANY_STALLED, at=at))


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
    await session.execute(_INSERT_SESSION, dict(vars(row)))


async def update_session(session: AsyncSession, *, row: Session) -> None:
    values = dict(vars(row))
    values["row_id"] = values.pop("id")
    await session.execute(_UPDATE_SESSION, values)


async def get_session(session: AsyncSession, *, task_id: str, session_id: str) -> Session | None:
    row = (
        await session.execute(
            select(sessions).where(sessions.c.id == session_id, sessions.c.task_id == task_id)
        )
    ).first()
    return _session(row) if row else None


def _pending_commands(enqueued_before: Any) -> Any:
    c = sessions.c
    pending = or_(
        and_(c.closed_at.is_not(None), c.agent_closed.is_(False)),
        and_(c.closed_at.is_(None), c.model != c.agent_model),
        and_(c.closed_at.is_(None), c.stop_requested_at.is_not(None), c.status == "running"),
    )
    return and_(c.sandbox_session != "", pending, or_(c.command_at.is_(None), c.command_at < enqueued_before))


async def sessions_with_pending_commands(
    session: AsyncSession, *, enqueued_before: dt.datetime
) -> list[Session]:
    """Sessions with a session command not yet done (an agent session to close, a model to apply, a
    stop whose turns are still running) that was last enqueued before `enqueued_before` (or never)."""
    query = select(sessions).where(_pending_commands(enqueued_before)).order_by(sessions.c.id)
    return [_session(r) for r in (await session.execute(query)).all()]


_ANY_PENDING_COMMAND = Read(select(sessions.c.id).where(_pending_commands(bindparam("before"))).limit(1))


async def any_pending_command(db: Database, *, enqueued_before: dt.datetime) -> bool:
    """Whether `sessions_with_pending_commands` would find a session, in one statement (no transaction)."""
    return bool(await db.fetch(_ANY_PENDING_COMMAND, before=enqueued_before))


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


def _message(row: Any, *, extra: tuple[str, ...] = ()) -> QueuedMessage:
    """A messages row as a QueuedMessage; `extra` names joined columns to leave out."""
    data = {k: v for k, v in row._mapping.items() if k not in extra}
    data["attachments"] = list(data["attachments"] or [])
    return QueuedMessage(**data)


async def insert_message(session: AsyncSession, *, message: QueuedMessage) -> None:
    await session.execute(_INSERT_MESSAGE, dict(vars(message)))


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


async def claim_stale_messages(
    session: AsyncSession, *, before: dt.datetime, at: dt.datetime, limit: int
) -> list[tuple[str, QueuedMessage]]:
    """Open messages (queued or delivered) of open sessions of live tasks last sent before `before`,
    least recently sent first (so a backlog larger than `limit` rotates), with their organization;
    each is marked `resent_at = at` in this transaction, so replicas sweeping at the same time take
    different rows (`SKIP LOCKED` on PostgreSQL)."""
    last_sent = func.coalesce(messages.c.resent_at, messages.c.created_at)
    query = (
        select(sessions.c.organization, messages)
        .join(sessions, sessions.c.id == messages.c.session_id)
        .join(tasks, tasks.c.id == messages.c.task_id)
        .where(
            messages.c.state.in_(("queued", "delivered")),
            messages.c.created_at < before,
            last_sent < before,
            sessions.c.closed_at.is_(None),
            tasks.c.ended_at.is_(None),
        )
        .order_by(last_sent, messages.c.id)
        .limit(limit)
        .with_for_update(of=messages, skip_locked=True)
    )
    rows = (await session.execute(query)).all()
    found = [(row.organization, _message(row, extra=("organization",))) for row in rows]
    if found:
        await session.execute(
            update(messages).where(messages.c.id.in_([m.id for _, m in found])).values(resent_at=at)
        )
    return found


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
        state.updated_at = row.updated_at
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
        draft_updated_at=row.draft_updated_at,
        updated_at=row.updated_at,
    )


async def user_states_in_organization(
    session: AsyncSession, *, organization: str, user_id: str
) -> list[tuple[Task, UserTaskState]]:
    """Every task of `organization` the user has a state of, with that state (three queries)."""
    task_rows = (
        await session.execute(
            select(tasks)
            .join(user_task_states, user_task_states.c.task_id == tasks.c.id)
            .where(tasks.c.organization == organization, user_task_states.c.user_id == user_id)
            .order_by(tasks.c.id)
        )
    ).all()
    found = {row.id: (_task(row), UserTaskState(task_id=row.id, user=user_id)) for row in task_rows}
    if not found:
        return []
    for row in (
        await session.execute(
            select(user_task_states).where(
                user_task_states.c.user_id == user_id, user_task_states.c.task_id.in_(list(found))
            )
        )
    ).all():
        state = found[row.task_id][1]
        state.active_session = row.active_session
        state.updated_at = row.updated_at
    for row in (
        await session.execute(
            select(user_session_states).where(
                user_session_states.c.user_id == user_id, user_session_states.c.task_id.in_(list(found))
            )
        )
    ).all():
        found[row.task_id][1].sessions.append(_user_session(row))
    return list(found.values())


async def users_with_state(session: AsyncSession, *, task_id: str) -> list[str]:
    """Every user that has a state of the task (its viewers)."""
    rows = (
        await session.execute(select(user_task_states.c.user_id).where(user_task_states.c.task_id == task_id))
    ).all()
    return [r.user_id for r in rows]


def _put_user_task_state(insert_: Any) -> Any:
    stmt = insert_(user_task_states).values(
        task_id=bindparam("task_id"),
        user_id=bindparam("user_id"),
        active_session=bindparam("active_session"),
        updated_at=bindparam("updated_at", type_=user_task_states.c.updated_at.type),
    )
    return stmt.on_conflict_do_update(
        index_elements=[user_task_states.c.task_id, user_task_states.c.user_id],
        set_={"active_session": stmt.excluded.active_session, "updated_at": stmt.excluded.updated_at},
    )


# One upsert statement (was a SELECT, then an UPDATE or INSERT).
_PUT_USER_TASK_STATE = {
    "postgresql": _put_user_task_state(postgresql.insert),
    "sqlite": _put_user_task_state(sqlite.insert),
}


async def put_user_task_state(
    session: AsyncSession, *, task_id: str, user_id: str, active_session: str, at: dt.datetime
) -> None:
    await session.execute(
        _PUT_USER_TASK_STATE[session.get_bind().dialect.name],
        {"task_id": task_id, "user_id": user_id, "active_session": active_session, "updated_at": at},
    )


def _put_user_session_state(insert_: Any) -> Any:
    stmt = insert_(user_session_states)
    columns = ("task_id", "unread", "draft_text", "draft_attachments", "draft_updated_at", "updated_at")
    return stmt.on_conflict_do_update(
        index_elements=[user_session_states.c.session_id, user_session_states.c.user_id],
        set_={c: stmt.excluded[c] for c in columns},
    )


# An upsert: two calls at once for a user's first state of a session (two messages sent together)
# both found no row and both inserted, and the second failed on pk_user_session_states (INTERNAL).
_PUT_USER_SESSION_STATE = {
    "postgresql": _put_user_session_state(postgresql.insert),
    "sqlite": _put_user_session_state(sqlite.insert),
}


async def put_user_session_state(session: AsyncSession, *, task_id: str, state: UserSessionState) -> None:
    await session.execute(
        _PUT_USER_SESSION_STATE[session.get_bind().dialect.name],
        {
            "session_id": state.session_id,
            "user_id": state.user,
            "task_id": task_id,
            "unread": state.unread,
            "draft_text": state.draft_text,
            "draft_attachments": state.draft_attachments,
            "draft_updated_at": state.draft_updated_at,
            "updated_at": state.updated_at,
        },
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
