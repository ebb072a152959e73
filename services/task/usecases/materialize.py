"""Turn a virtual task (an organization task-index entry derived from a pull request) into a task:
explicitly (MaterializeTask), or on first use (GetTask, WatchTask, CreateSession on its name; see
`on_first_use`). Get-or-create and idempotent: concurrent first uses make one task."""

from __future__ import annotations

from foundry.github_data.v1 import repository_pb2
from sqlalchemy.exc import IntegrityError

from services.platform.errors import FailedPrecondition, NotFound
from services.task.domain import names
from services.task.domain.errors import DOMAIN
from services.task.domain.models import Session, Task
from services.task.domain.rules import resolve_title
from services.task.store import queries
from services.task.usecases import tasks as task_ops
from services.task.usecases.deps import Deps


async def materialize(deps: Deps, name: str, *, agent: str, model: str) -> tuple[Task, list[Session]]:
    """The existing task, or a new one taking id, branch and title from the index entry; its
    provisioning is enqueued as for CreateTask. Errors: NotFound (no entry), FailedPrecondition."""
    org, task_id = names.task(name)
    agent_id = names.agent(agent)
    await deps.membership.require(f"organizations/{org}")
    async with deps.db.snapshot() as session:
        existing = await queries.get_task(session, task_id=task_id, organization=org)
        if existing is not None:
            return existing, await queries.list_sessions(session, task_id=task_id)
    entry = await deps.organization.task_index_entry(organization=org, task_id=task_id)
    if not entry.repository or not entry.branch:
        raise FailedPrecondition(
            f"{name} has no repository or branch to materialize", reason="NOT_MATERIALIZABLE", domain=DOMAIN
        )
    repo = await deps.github_data.repository(entry.repository)
    prompt = entry.title or f"Continue work on branch {entry.branch}"
    req = task_ops.NewTask(
        organization=org,
        repository=entry.repository,
        prompt=prompt,
        title=entry.title,
        branch=entry.branch,
        on_existing_branch=True,
        agent=agent_id,
        model=model,
    )
    user_id = task_ops.caller_user_id()
    try:
        return await _insert(deps, req, task_id, prompt, entry.title, entry.branch, repo, user_id)
    except IntegrityError:  # a concurrent first use inserted it: that task is the one
        async with deps.db.snapshot() as session:
            existing = await queries.get_task(session, task_id=task_id, organization=org)
            if existing is None:
                raise
            return existing, await queries.list_sessions(session, task_id=task_id)


async def on_first_use(deps: Deps, name: str) -> bool:
    """Materialize `name` if the organization's task index holds it as a virtual task (a pull
    request's branch that no task owns yet). True when the task exists now; False when no virtual
    task has that name (the caller's NOT_FOUND stands). A task index entry that is not virtual is a
    task still being created by CreateTask (its branch is reserved before its row exists): never
    made here."""
    org, task_id = names.task(name)
    try:
        entry = await deps.organization.task_index_entry(organization=org, task_id=task_id)
    except NotFound:
        return False
    if not entry.virtual:
        return False
    await materialize(deps, name, agent="", model="")
    return True


async def _insert(
    deps: Deps,
    req: task_ops.NewTask,
    task_id: str,
    prompt: str,
    title: str,
    branch: str,
    repo: repository_pb2.Repository,
    user_id: str,
) -> tuple[Task, list[Session]]:
    return await task_ops._insert(
        deps,
        req,
        task_id=task_id,
        title=resolve_title(prompt, title),
        branch=branch,
        repo_full_name=repo.full_name,
        clone_url=repo.clone_url,
        default_branch=repo.default_branch,
        user_id=user_id,
        # The prompt here is made up from the index entry (a pull request's title, or "Continue
        # work on branch …"), not an instruction anyone gave: sending it would have the agent
        # change someone's branch unasked. The user's first SendMessage starts the work instead.
        send_prompt=False,
    )
