"""Task use cases: create (bootstrap only), read, list, rename, owner, materialize."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from foundry.task.v1 import events_pb2
from sqlalchemy.exc import IntegrityError

from services.platform import context
from services.platform.errors import FailedPrecondition, Unauthenticated
from services.platform.identity import Caller
from services.platform.logging import get_logger
from services.platform.paging import offset_page
from services.task.domain import names
from services.task.domain.errors import DOMAIN, TaskNotFound, require
from services.task.domain.models import Owner, Session, Task, UserTaskState, now
from services.task.domain.rules import branch_prefix, resolve_title, validate_branch
from services.task.store import queries
from services.task.usecases import first_turn
from services.task.usecases.agents import check_agent
from services.task.usecases.changes import Audit, task_changed
from services.task.usecases.deps import Deps

log = get_logger(__name__)


@dataclass
class NewTask:
    """A validated CreateTask request."""

    organization: str
    repository: str
    prompt: str
    title: str = ""
    branch: str = ""
    on_existing_branch: bool = False
    agent: str = ""
    model: str = ""
    request_id: str = ""


def caller_user_id() -> str:
    """The calling user's id; Unauthenticated for a missing caller, "" for a service caller."""
    who = context.caller()
    if who is None:
        raise Unauthenticated("no caller identity", reason="CALLER_IDENTITY_MISSING")
    return who.user_id


def validate_new_task(
    *,
    parent: str,
    repository: str,
    prompt: str,
    title: str,
    branch: str,
    on_existing_branch: bool,
    agent: str,
    model: str,
    request_id: str,
) -> NewTask:
    """Check every field of a CreateTask request; raises InvalidArgument naming the field."""
    org = names.organization(parent)
    repo_org, _ = names.repository(repository)
    require(repo_org == org, "task.repository", "must belong to the parent organization")
    require(bool(prompt.strip()), "task.prompt", "must not be empty")
    require(len(prompt) <= 100_000, "task.prompt", "must be at most 100000 characters")
    require(len(title) <= 200, "task.title", "must be at most 200 characters")
    if branch:
        validate_branch(branch)
    require(not on_existing_branch or bool(branch), "task.branch", "is required with on_existing_branch")
    require(len(model) <= 100, "model", "must be at most 100 characters")
    require(len(request_id) <= 100, "request_id", "must be at most 100 characters")
    return NewTask(
        organization=org,
        repository=repository,
        prompt=prompt,
        title=title,
        branch=branch,
        on_existing_branch=on_existing_branch,
        agent=names.agent(agent),
        model=model,
        request_id=request_id,
    )


async def create_task(deps: Deps, req: NewTask) -> tuple[Task, list[Session]]:
    """Persist a task in INIT_ENQUEUE_PROVISION with its first session, the prompt as that
    session's first message (sent when the session is ready, see `first_turn`) and enqueue
    provisioning.

    Cheap bounded peer calls only: ListAgents (when an agent is named; see `agents.check_agent`),
    GetRepository (stored row, cached: `deps.repositories`) and ReserveTaskBranch. A retry with the
    same request_id returns the first task. Errors: NotFound (repository), AlreadyExists
    (`BRANCH_TAKEN`), InvalidArgument (also an agent this mesh does not have, a model the agent does
    not offer), FailedPrecondition (`AGENT_NOT_INSTALLED`, `AGENT_CREDENTIALS_MISSING`),
    PermissionDenied.
    """
    await deps.membership.require(f"organizations/{req.organization}")
    user_id = caller_user_id()
    if req.request_id:
        found = await queries.task_by_request(
            deps.db, organization=req.organization, request_id=req.request_id
        )
        if found is not None:
            return found
    await check_agent(deps, req.agent, "agent", model=req.model, organization=req.organization)
    repo = await deps.repositories.get(req.repository)
    task_id = uuid.uuid4().hex
    title = resolve_title(req.prompt, req.title)
    if req.on_existing_branch:
        mode, wanted = "existing", req.branch
    elif req.branch:
        mode, wanted = "exact", req.branch
    else:
        mode, wanted = "generate", branch_prefix(title)
    branch = await deps.organization.reserve_branch(
        organization=req.organization,
        task_id=task_id,
        repository=req.repository,
        branch=wanted,
        mode=mode,
        title=title,
    )
    try:
        return await _insert(
            deps,
            req,
            task_id=task_id,
            title=title,
            branch=branch,
            repo_full_name=repo.full_name,
            clone_url=repo.clone_url,
            default_branch=repo.default_branch,
            user_id=user_id,
        )
    except IntegrityError:
        # A concurrent retry with the same request_id won: hand back its task, release ours.
        await _release(deps, req.organization, task_id)
        async with deps.db.snapshot() as session:
            existing = await queries.find_task_by_request(
                session, organization=req.organization, request_id=req.request_id
            )
            if existing is None:
                raise
            return existing, await queries.list_sessions(session, task_id=existing.id)
    except BaseException:
        await _release(deps, req.organization, task_id)
        raise


async def _release(deps: Deps, organization: str, task_id: str) -> None:
    try:
        await deps.organization.release_branch(organization=organization, task_id=task_id)
    except Exception:  # the reservation is then only a stale index entry; logged for operators
        log.warning("branch_release_failed", task_id=task_id, exc_info=True)


async def _insert(
    deps: Deps,
    req: NewTask,
    *,
    task_id: str,
    title: str,
    branch: str,
    repo_full_name: str,
    clone_url: str,
    default_branch: str,
    user_id: str,
    send_prompt: bool = True,
) -> tuple[Task, list[Session]]:
    """Insert the task, its first session and (with `send_prompt`) the prompt as that session's
    held first message, and enqueue provisioning, all in one transaction."""
    at = now()
    task = Task(
        id=task_id,
        organization=req.organization,
        repository=req.repository,
        repository_full_name=repo_full_name,
        clone_url=clone_url,
        default_branch=default_branch,
        title=title,
        prompt=req.prompt,
        branch=branch,
        status="init_enqueue_provision",
        agent=req.agent,
        model=req.model,
        stage="queued",
        stage_updated_at=at,
        request_id=req.request_id or None,
        owner=_caller_owner(user_id, at),
        created_at=at,
        updated_at=at,
    )
    first = Session(
        id=f"session-{uuid.uuid4()}",
        task_id=task_id,
        organization=req.organization,
        position=1,
        display_name="Session 1",
        agent=req.agent,
        model=req.model,
        status="pending_provision",
        created_at=at,
        updated_at=at,
    )
    async with deps.db.transaction() as session:
        await queries.insert_session(session, row=first)
        if send_prompt:
            message = first_turn.first_message(task, first, user=f"users/{user_id}" if user_id else "")
            await queries.insert_message(session, message=message)
        states: list[UserTaskState] = []
        if user_id:
            await queries.put_user_task_state(
                session, task_id=task_id, user_id=user_id, active_session=first.id, at=at
            )
            states.append(
                UserTaskState(task_id=task_id, user=user_id, active_session=first.id, updated_at=at)
            )
        sessions = await task_changed(
            session,
            deps,
            task,
            sessions=[first],
            changed_sessions=[first],
            user_states=states,
            insert=True,
            audits=[Audit("task.created", title=title, branch=branch, prompt=req.prompt[:500])],
        )
        await deps.outbox.enqueue(
            session, queue=deps.queue("provision"), message=events_pb2.ProvisionTask(name=task.name)
        )
    log.info("task_created", task=task.name, branch=branch)
    return task, sessions


def _caller_owner(user_id: str, at: object) -> Owner | None:
    who = context.caller()
    if not user_id or who is None:
        return None
    return Owner(user=f"users/{user_id}", login=who.login, avatar_url=who.avatar_url, updated_at=at)  # type: ignore[arg-type]


async def load(deps: Deps, name: str, *, authorize: bool = True) -> tuple[Task, list[Session]]:
    """The task and all its sessions. Errors: InvalidArgument (name), NotFound, PermissionDenied."""
    org, task_id = names.task(name)
    if authorize:
        await deps.membership.require(f"organizations/{org}")
    async with deps.db.snapshot() as session:
        task = await queries.get_task(session, task_id=task_id, organization=org)
        if task is None:
            raise TaskNotFound(name)
        return task, await queries.list_sessions(session, task_id=task_id)


async def load_detail(deps: Deps, name: str) -> queries.TaskDetail:
    """GetTask's read: the task, its sessions and the caller's unread flags, in one statement
    (`queries.task_detail`: no ORM session, one consistent state). Errors as `load`."""
    org, task_id = names.task(name)
    await deps.membership.require(f"organizations/{org}")
    detail = await queries.task_detail(deps.db, task_id=task_id, organization=org, user_id=caller_user_id())
    if detail is None:
        raise TaskNotFound(name)
    return detail


async def list_tasks(
    deps: Deps, *, parent: str, repository: str, show_ended: bool, page_size: int, page_token: str
) -> tuple[list[tuple[Task, list[Session]]], str]:
    """A page of an organization's tasks (most recently updated first) and the next page token."""
    org = names.organization(parent)
    if repository:
        names.repository(repository, "repository")
    offset, size = offset_page(page_size, page_token, default=50, maximum=500, domain=DOMAIN)
    await deps.membership.require(parent)
    rows = await queries.task_page(
        deps.db, organization=org, repository=repository, show_ended=show_ended, offset=offset, limit=size + 1
    )
    token = str(offset + size) if len(rows) > size else ""
    return rows[:size], token


async def rename_task(deps: Deps, name: str, title: str) -> tuple[Task, list[Session]]:
    """Change the title. Errors: InvalidArgument (empty), NotFound."""
    org, task_id = names.task(name)
    require(bool(title.strip()), "title", "must not be empty")
    require(len(title) <= 200, "title", "must be at most 200 characters")
    await deps.membership.require(f"organizations/{org}")
    async with deps.db.transaction() as session:
        task = await _locked(session, org, task_id, name)
        if task.title != title.strip():
            task.title = title.strip()
            sessions = await task_changed(
                session, deps, task, audits=[Audit("task.rename", title=task.title)]
            )
        else:
            sessions = await queries.list_sessions(session, task_id=task_id)
    return task, sessions


async def set_owner(deps: Deps, name: str, user: str) -> tuple[Task, list[Session]]:
    """Make `user` (`users/{id}`), a member, the owner (with their login and avatar). Cheap bounded
    peer calls: CheckMembership and GetUser, asked as the task service (a user may only ask the
    organization service about themselves). Errors: FailedPrecondition (`NOT_A_MEMBER`), NotFound."""
    org, task_id = names.task(name)
    user_id = names.user(user)
    await deps.membership.require(f"organizations/{org}")
    # The caller is a member (checked above); whether `user` is one only this service may ask the
    # organization service (a user may only ask about themselves).
    with context.bound(request_id=context.request_id(), caller=Caller.service("task")):
        member = await deps.organization.is_member(organization=org, user=user)
        profile = await deps.organization.user(f"users/{user_id}") if member else None
    if profile is None:
        raise FailedPrecondition(
            f"{user} is not a member of organizations/{org}", reason="NOT_A_MEMBER", domain=DOMAIN
        )
    async with deps.db.transaction() as session:
        task = await _locked(session, org, task_id, name)
        task.owner = Owner(
            user=f"users/{user_id}", login=profile.login, avatar_url=profile.avatar_url, updated_at=now()
        )
        sessions = await task_changed(session, deps, task, audits=[Audit("task.owner", user=user)])
    return task, sessions


async def _locked(session: object, org: str, task_id: str, name: str) -> Task:
    task = await queries.get_task(session, task_id=task_id, organization=org, lock=True)  # type: ignore[arg-type]
    if task is None:
        raise TaskNotFound(name)
    return task
