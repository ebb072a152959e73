"""WatchTask, WatchSession and WatchUserTaskStates over the platform hub. Scopes: `task:{task name}`
(Task + every viewer's UserTaskState), `session:{session name}` (Session + every viewer's
UserSessionState) and `user_task_states:organizations/{org}/users/{user}` (that one user's
UserTaskStates in the organization; the scope is the caller's own, so nothing needs filtering).
A viewer's state is only sent to that viewer: another user's item is replaced by a BOOKMARK with
the same token, which tells the client nothing except that it is up to date."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeVar

from foundry.common.v1 import watch_pb2
from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncSession

from services.platform.errors import PermissionDenied
from services.platform.watch import WatchHub
from services.task import convert
from services.task.domain import names
from services.task.domain.errors import DOMAIN, SessionNotFound, TaskNotFound
from services.task.store import queries
from services.task.usecases.changes import session_scope, task_scope, user_states_scope
from services.task.usecases.deps import Deps
from services.task.usecases.tasks import caller_user_id

M = TypeVar("M", bound=Message)


def _mine(event: watch_pb2.WatchEvent, user_id: str) -> watch_pb2.WatchEvent:
    if event.kind in (watch_pb2.WATCH_EVENT_KIND_UPSERT, watch_pb2.WATCH_EVENT_KIND_DELETE) and event.items:
        item_name = event.items[0].name
        _, sep, owner = item_name.rpartition("/userStates/")
        if sep and owner != user_id:
            return watch_pb2.WatchEvent(
                kind=watch_pb2.WATCH_EVENT_KIND_BOOKMARK, resume_token=event.resume_token
            )
    return event


async def watch_task(
    deps: Deps, hub: WatchHub, name: str, resume_token: str, wrap: Callable[[watch_pb2.WatchEvent], M]
) -> AsyncIterator[M]:
    org, task_id = names.task(name)
    organization = f"organizations/{org}"
    await deps.membership.require(organization)
    user_id = caller_user_id()

    async def snapshot(session: AsyncSession) -> Sequence[tuple[str, Message]]:
        task = await queries.get_task(session, task_id=task_id, organization=org)
        if task is None:
            raise TaskNotFound(name)
        sessions = await queries.list_sessions(session, task_id=task_id)
        items: list[tuple[str, Message]] = [(task.name, convert.task(task, sessions, status=task.status))]
        if user_id:
            state = await queries.get_user_task_state(session, task_id=task_id, user_id=user_id)
            pb = convert.user_task_state(task, state, [s.id for s in sessions if not s.closed])
            items.append((pb.name, pb))
        return items

    async def authorize() -> None:
        await deps.membership.require(organization)

    async for event in hub.stream(
        task_scope(name), resume_token=resume_token, snapshot=snapshot, authorize=authorize, wrap=lambda e: e
    ):
        yield wrap(_mine(event, user_id))


async def watch_session(
    deps: Deps, hub: WatchHub, name: str, resume_token: str, wrap: Callable[[watch_pb2.WatchEvent], M]
) -> AsyncIterator[M]:
    org, task_id, session_id = names.session(name)
    organization = f"organizations/{org}"
    await deps.membership.require(organization)
    user_id = caller_user_id()

    async def snapshot(session: AsyncSession) -> Sequence[tuple[str, Message]]:
        task = await queries.get_task(session, task_id=task_id, organization=org)
        row = await queries.get_session(session, task_id=task_id, session_id=session_id)
        if task is None or row is None:
            raise SessionNotFound(name)
        items: list[tuple[str, Message]] = [(row.name, convert.session(row))]
        if user_id:
            state = await queries.get_user_task_state(session, task_id=task_id, user_id=user_id)
            own = next((s for s in state.sessions if s.session_id == session_id), None)
            if own is not None:
                pb = convert.user_session_state(task, own)
                items.append((pb.name, pb))
        return items

    async def authorize() -> None:
        await deps.membership.require(organization)

    async for event in hub.stream(
        session_scope(name),
        resume_token=resume_token,
        snapshot=snapshot,
        authorize=authorize,
        wrap=lambda e: e,
    ):
        yield wrap(_mine(event, user_id))


async def watch_user_task_states(
    deps: Deps, hub: WatchHub, parent: str, resume_token: str, wrap: Callable[[watch_pb2.WatchEvent], M]
) -> AsyncIterator[M]:
    """The caller's own UserTaskStates in organization `parent` (users only, members only). The
    scope is keyed by the caller's id, so a stream can only ever see its caller's rows."""
    org = names.organization(parent)
    organization = f"organizations/{org}"
    user_id = caller_user_id()
    if not user_id:
        raise PermissionDenied("only users have task state", reason="NOT_A_USER", domain=DOMAIN)
    await deps.membership.require(organization)

    async def snapshot(session: AsyncSession) -> Sequence[tuple[str, Message]]:
        found = await queries.user_states_in_organization(session, organization=org, user_id=user_id)
        open_sessions = await queries.sessions_of(session, task_ids=[t.id for t, _ in found])
        items: list[tuple[str, Message]] = []
        for task, state in found:
            pb = convert.user_task_state(task, state, [s.id for s in open_sessions.get(task.id, [])])
            items.append((pb.name, pb))
        return items

    async def authorize() -> None:
        await deps.membership.require(organization)

    async for response in hub.stream(
        user_states_scope(organization, user_id),
        resume_token=resume_token,
        snapshot=snapshot,
        authorize=authorize,
        wrap=wrap,
    ):
        yield response
