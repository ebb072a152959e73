"""PublishPullRequest and PushTask: requested by an RPC (returns at once), run by a worker on the
`command` queue. PushTask is a push-only publication: the same record and worker, without the pull
request.

The request records the publication on the task (state `publishing`, its request id, title, body,
draft) and enqueues `RunTaskCommand(PUBLISH_PULL_REQUEST)` in the same transaction. The worker
takes the task's lease (one writer per task across replicas, as provisioning steps do), fetches a
git token from github-data for HTTPS remotes, pushes the branch through the sandbox service, opens
the pull request through github-data, and records `published` (with the pull request summary on
the task) or `error` with a readable message; every state is on WatchTask.

Redelivery and retries are idempotent: a finished publication is not run again; pushing the same
head twice changes nothing; a pull request already open for the branch (GitHub answers 422, or
github-data has it stored) is looked up and recorded instead of opening a second one.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from foundry.github_data.v1 import github_data_service_pb2 as gd_pb2
from foundry.github_data.v1 import pull_request_pb2, sync_status_pb2
from foundry.task.v1 import events_pb2

from services.platform.errors import AlreadyExists, FailedPrecondition
from services.platform.logging import get_logger
from services.task.domain import names
from services.task.domain.errors import DOMAIN, NoSandbox, TaskEnded, TaskNotFound, require
from services.task.domain.models import Session, Task, now
from services.task.store import queries
from services.task.usecases.changes import Audit, task_changed
from services.task.usecases.deps import Deps
from services.task.usecases.lease import StepFailed, run_leased

log = get_logger(__name__)
PUBLISHING, PUBLISHED, ERROR = "publishing", "published", "error"
OPEN_STATES = (pull_request_pb2.PULL_REQUEST_STATE_OPEN, pull_request_pb2.PULL_REQUEST_STATE_DRAFT)


@dataclass
class PublishRequest:
    """A validated PublishPullRequest request."""

    name: str
    title: str = ""
    body: str = ""
    draft: bool = False
    request_id: str = ""
    push_only: bool = False  # PushTask
    reason: str = ""  # PushTask's audit reason


def validate(*, name: str, title: str, body: str, draft: bool, request_id: str) -> PublishRequest:
    """Check a PublishPullRequest request; raises InvalidArgument naming the field."""
    names.task(name)
    require(len(title) <= 256, "title", "must be at most 256 characters")
    require(len(body) <= 65_536, "body", "must be at most 65536 characters")
    require(len(request_id) <= 100, "request_id", "must be at most 100 characters")
    return PublishRequest(name=name, title=title.strip(), body=body, draft=draft, request_id=request_id)


def validate_push(*, name: str, reason: str, request_id: str) -> PublishRequest:
    """Check a PushTask request; raises InvalidArgument naming the field."""
    names.task(name)
    require(len(reason) <= 1000, "reason", "must be at most 1000 characters")
    require(len(request_id) <= 100, "request_id", "must be at most 100 characters")
    return PublishRequest(name=name, request_id=request_id, push_only=True, reason=reason)


def _open_pull_request(task: Task) -> pull_request_pb2.PullRequestSummary | None:
    if not task.pull_request:
        return None
    summary = pull_request_pb2.PullRequestSummary.FromString(task.pull_request)
    return summary if summary.state in OPEN_STATES else None


async def request(deps: Deps, req: PublishRequest) -> tuple[Task, list[Session]]:
    """Record the publication (`publishing`) and enqueue it; a retry with the same request id
    returns the task as it is. Cheap bounded peer read only: the organization's stored connection
    (local organizations have no pull requests).

    Errors: NotFound, PermissionDenied, FailedPrecondition (`PROVIDER_HAS_NO_PULL_REQUESTS`,
    `NO_SANDBOX`, `TASK_ENDED`, `PUBLISH_IN_PROGRESS`), AlreadyExists (`PULL_REQUEST_ALREADY_EXISTS`).
    """
    org, task_id = names.task(req.name)
    await deps.membership.require(f"organizations/{org}")
    async with deps.db.snapshot() as session:
        task = await queries.get_task(session, task_id=task_id, organization=org)
        if task is None:
            raise TaskNotFound(req.name)
        if req.request_id and task.publish_request_id == req.request_id:
            return task, await queries.list_sessions(session, task_id=task_id)
    if not req.push_only and await deps.github_data.provider(org) != sync_status_pb2.PROVIDER_GITHUB:
        raise FailedPrecondition(
            f"organizations/{org} is a local organization: local repositories have no pull requests; "
            "use PushTask to push the branch",
            reason="PROVIDER_HAS_NO_PULL_REQUESTS",
            domain=DOMAIN,
        )
    async with deps.db.transaction() as session:
        task = await queries.get_task(session, task_id=task_id, organization=org, lock=True)
        if task is None:
            raise TaskNotFound(req.name)
        if req.request_id and task.publish_request_id == req.request_id:
            return task, await queries.list_sessions(session, task_id=task_id)
        if task.ended:
            raise TaskEnded(task.name, task.status)
        if task.provisioning or not task.sandbox_cwd:
            raise NoSandbox(task.name)
        if task.publish_state == PUBLISHING:
            raise FailedPrecondition(
                f"a pull request for {task.branch} is being published (request {task.publish_request_id})",
                reason="PUBLISH_IN_PROGRESS",
                domain=DOMAIN,
            )
        existing = None if req.push_only else _open_pull_request(task)
        if existing is not None:
            raise AlreadyExists(
                f"pull request #{existing.number} is open for {task.branch}: {existing.url}",
                reason="PULL_REQUEST_ALREADY_EXISTS",
                domain=DOMAIN,
            )
        at = now()
        task.publish_state, task.publish_error, task.publish_head_commit = PUBLISHING, "", ""
        task.publish_request_id = req.request_id or uuid.uuid4().hex
        task.publish_title, task.publish_body, task.publish_draft = req.title, req.body, req.draft
        task.publish_push_only = req.push_only
        task.publish_requested_at = task.publish_updated_at = at
        if req.push_only:
            audit = Audit("task.push.requested", reason=req.reason)
        else:
            audit = Audit("task.publish.requested", title=req.title or task.title, draft=req.draft)
        sessions = await task_changed(session, deps, task, audits=[audit])
        await deps.outbox.enqueue(
            session,
            queue=deps.queue("command"),
            message=events_pb2.RunTaskCommand(
                name=task.name,
                command=events_pb2.TASK_COMMAND_PUBLISH_PULL_REQUEST,
                reason="push the branch" if req.push_only else "publish pull request",
            ),
        )
    log.info("publish_requested", task=task.name, request_id=task.publish_request_id)
    return task, sessions


async def run(deps: Deps, name: str, *, last_attempt: bool = True) -> None:
    """Background: push and open the pull request of the task's pending publication (no-op when
    there is none, or another replica holds the task). Raises a retryable FoundryError to ask for
    a delayed retry unless `last_attempt`, in which case the failure is recorded as `error`."""
    _, task_id = names.task(name)
    claim = f"{deps.replica}:publish:{uuid.uuid4().hex[:12]}"
    task = await _claim(deps, task_id, claim)
    if task is None:
        return
    stage = ["pushing the branch"]
    outcome = await run_leased(
        deps,
        task_id,
        claim,
        lambda: _execute(deps, task, stage),
        timeout=deps.step_timeout * 2,
        doing=lambda: stage[0],
        last_attempt=last_attempt,
    )
    await _complete(deps, task_id, claim, task.publish_request_id or "", outcome)


async def _claim(deps: Deps, task_id: str, claim: str) -> Task | None:
    async with deps.db.transaction() as session:
        task = await queries.get_task(session, task_id=task_id, lock=True)
        if task is None or task.publish_state != PUBLISHING:
            return None
        at = now()
        if task.lease_owner and task.lease_until and task.lease_until > at:
            log.info("publish_busy", task=task.name, holder=task.lease_owner)
            return None  # the holder finishes it; if it dies, the stall sweep re-enqueues
        until = at + dt.timedelta(seconds=deps.lease_seconds)
        await queries.set_lease(session, task_id=task_id, owner=claim, until=until)
        return task


async def _execute(
    deps: Deps, task: Task, stage: list[str]
) -> tuple[pull_request_pb2.PullRequestSummary | None, str]:
    """Push, then (unless push-only) open or find the pull request; returns (summary or None,
    pushed head commit). `stage[0]` names the step in progress, for the error message."""
    token = ""
    if task.clone_url.startswith(("https://", "http://")):
        stage[0] = "getting git credentials"
        token = await deps.github_data.access_token(task.repository, deadline=deps.step_timeout)
    stage[0] = "pushing the branch"
    # The agent's edits are usually not committed: commit them as the pull request's change.
    pushed = await deps.sandbox.push(
        task.sandbox_name,
        access_token=token,
        commit_message=task.publish_title or task.title,
        deadline=deps.step_timeout,
    )
    if task.publish_push_only:
        return None, pushed.head_commit
    branch = pushed.branch or task.branch
    stage[0] = "opening the pull request"
    request = gd_pb2.PublishPullRequestRequest(
        parent=task.repository,
        head_branch=branch,
        base_branch=task.default_branch,
        title=task.publish_title or task.title,
        body=task.publish_body or task.prompt,
        draft=task.publish_draft,
        task=task.name,
        request_id=task.publish_request_id or "",
    )
    try:
        pr = await deps.github_data.publish_pull_request(request, deadline=deps.step_timeout)
    except AlreadyExists:
        # A retry after GitHub created it (or one opened by hand): record that one, never a second.
        found = await deps.github_data.open_pull_request(task.repository, branch)
        if found is None:
            raise StepFailed(
                f"a pull request for {branch} already exists on GitHub; it shows on the task after the "
                "next sync"
            ) from None
        pr = found
    return pr, pushed.head_commit


async def _complete(
    deps: Deps,
    task_id: str,
    claim: str,
    request_id: str,
    outcome: tuple[pull_request_pb2.PullRequestSummary | None, str] | StepFailed,
) -> None:
    async with deps.db.transaction() as session:
        task = await queries.get_task(session, task_id=task_id, lock=True)
        if task is None:
            return
        if task.lease_owner != claim:
            log.warning("publish_lease_lost", task=task.name)
            return  # another replica took over and re-runs the idempotent publication
        task.lease_owner, task.lease_until = None, None
        if task.publish_state != PUBLISHING or task.publish_request_id != request_id:
            await queries.update_task(session, task=task)
            return
        task.publish_updated_at = now()
        if isinstance(outcome, StepFailed):
            kind = "push" if task.publish_push_only else "publish"
            task.publish_state, task.publish_error = ERROR, outcome.message
            audits = [Audit(f"task.{kind}.failed", message=outcome.message)]
            log.warning(f"{kind}_failed", task=task.name, error=outcome.message)
            await task_changed(session, deps, task, audits=audits)
            return
        summary, head = outcome
        task.publish_state, task.publish_error, task.publish_head_commit = PUBLISHED, "", head
        if summary is None:  # push-only
            audits = [Audit("task.push.done", branch=task.branch, head_commit=head)]
            log.info("branch_pushed", task=task.name, head_commit=head)
        else:
            task.pull_request = summary.SerializeToString(deterministic=True)
            audits = [Audit("task.publish.done", number=summary.number, url=summary.url)]
            log.info("pull_request_published", task=task.name, number=summary.number)
        await task_changed(session, deps, task, audits=audits)


async def resume(deps: Deps, *, only_stalled: bool = False) -> int:
    """Re-enqueue publications left `publishing` that no live replica holds (all at start-up;
    with `only_stalled`, only those whose holder's lease lapsed). Returns how many."""
    async with deps.db.transaction() as session:
        rows = await queries.publishing_tasks(session, lease_expired_before=now(), only_stalled=only_stalled)
        for task in rows:
            if task.lease_owner is not None:
                await queries.set_lease(
                    session, task_id=task.id, owner=None, until=None, expected_owner=task.lease_owner
                )
            await deps.outbox.enqueue(
                session,
                queue=deps.queue("command"),
                message=events_pb2.RunTaskCommand(
                    name=task.name, command=events_pb2.TASK_COMMAND_PUBLISH_PULL_REQUEST, reason="resumed"
                ),
            )
    return len(rows)
