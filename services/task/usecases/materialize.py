"""Turn a virtual task (an organization task-index entry derived from a pull request) into a task."""

from __future__ import annotations

from services.platform.errors import FailedPrecondition
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
    return await task_ops._insert(
        deps,
        req,
        task_id=task_id,
        title=resolve_title(prompt, entry.title),
        branch=entry.branch,
        repo_full_name=repo.full_name,
        clone_url=repo.clone_url,
        default_branch=repo.default_branch,
        user_id=user_id,
        # The prompt here is made up from the index entry (a pull request's title, or "Continue
        # work on branch …"), not an instruction anyone gave: sending it would have the agent
        # change someone's branch unasked. The user's first SendMessage starts the work instead.
        send_prompt=False,
    )
