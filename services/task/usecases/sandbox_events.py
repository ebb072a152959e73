"""Apply the sandbox service's events to tasks: turn ends, git state, agent-session failures, and
pull requests from github-data."""

from __future__ import annotations

from foundry.github_data.v1 import events_pb2 as gd_events
from foundry.github_data.v1 import pull_request_pb2
from foundry.sandbox.v1 import agent_session_pb2
from foundry.sandbox.v1 import events_pb2 as sb_events

from services.task.domain import names
from services.task.domain.models import now
from services.task.store import queries
from services.task.usecases.changes import task_changed
from services.task.usecases.deps import Deps
from services.task.usecases.sessions import turn_ended

_FAILED = (agent_session_pb2.TURN_STATE_FAILED,)


async def on_turn_completed(deps: Deps, event: sb_events.TurnCompleted) -> None:
    parsed = names.turn(event.turn.name)
    if parsed is None:
        return
    org, sandbox_id, session_id, turn_id = parsed
    failed = ""
    if event.turn.state in _FAILED:
        failed = event.turn.error_message or "the agent turn failed"
    await turn_ended(deps, org=org, task_id=sandbox_id, session_id=session_id, turn_id=turn_id, failed=failed)


async def on_git_state(deps: Deps, event: sb_events.GitStateUpdated) -> None:
    """Cache the sandbox's git state on its task (only a newer version replaces the cached one)."""
    parsed = names.git_state(event.name)
    if parsed is None:
        return
    org, task_id = parsed
    async with deps.db.transaction() as session:
        task = await queries.get_task(session, task_id=task_id, organization=org, lock=True)
        if task is None or event.version <= task.git_state_version:
            return
        task.git_state = event.git_state.SerializeToString(deterministic=True)
        task.git_state_version = event.version
        await task_changed(session, deps, task)


async def on_session_changed(deps: Deps, event: sb_events.AgentSessionChanged) -> None:
    """An agent session failed or was closed under us: mark the session ERROR with the message."""
    state = event.agent_session.state
    if state != agent_session_pb2.AGENT_SESSION_STATE_ERROR:
        return
    parsed = names.sandbox_session(event.name)
    if parsed is None:
        return
    org, task_id, session_id = parsed
    async with deps.db.transaction() as session:
        task = await queries.get_task(session, task_id=task_id, organization=org, lock=True)
        row = await queries.get_session(session, task_id=task_id, session_id=session_id)
        if task is None or row is None or row.closed or row.status == "error":
            return
        row.status, row.error_message = (
            "error",
            event.agent_session.error_message or "the agent session failed",
        )
        row.current_turn, row.thinking_since, row.updated_at = "", None, now()
        await queries.update_session(session, row=row)
        await task_changed(session, deps, task, changed_sessions=[row])


def pull_request_summary(pr: pull_request_pb2.PullRequest) -> pull_request_pb2.PullRequestSummary:
    """The summary of a stored pull request, as tasks keep it."""
    return pull_request_pb2.PullRequestSummary(
        name=pr.name,
        number=pr.number,
        repository=pr.repository,
        repository_full_name=pr.repository_full_name,
        title=pr.title,
        state=pr.state,
        draft=pr.draft,
        url=pr.url,
        head_branch=pr.head_branch,
        base_branch=pr.base_branch,
        author_login=pr.author_login,
        update_time=pr.update_time,
    )


async def on_pull_request_changed(deps: Deps, event: gd_events.PullRequestChanged) -> None:
    """Store the summary of the pull request on the live task owning its head branch."""
    pr = event.pull_request
    async with deps.db.transaction() as session:
        task = await queries.find_task_by_branch(session, repository=pr.repository, branch=pr.head_branch)
        if task is None:
            return
        task = await queries.get_task(session, task_id=task.id, lock=True)
        if task is None:
            return
        encoded = pull_request_summary(pr).SerializeToString(deterministic=True)
        if task.pull_request == encoded:
            return
        task.pull_request = encoded
        await task_changed(session, deps, task)


async def on_pull_request_removed(deps: Deps, event: gd_events.PullRequestRemoved) -> None:
    """The pull request left GitHub's open list: keep its summary on the task owning its head branch
    with the final state (MERGED or CLOSED), or drop it when the row was swept without one.

    Archiving the task on close or merge is github_data's separate `ArchiveTaskOnBranch` command
    (`archive_on_branch` below), so each effect has exactly one path."""
    final = event.final_state
    async with deps.db.transaction() as session:
        found = await queries.find_task_by_branch(
            session, repository=event.repository, branch=event.head_branch
        )
        task = found and await queries.get_task(session, task_id=found.id, lock=True)
        if not task or task.pull_request is None:
            return
        encoded: bytes | None = None
        if final in (pull_request_pb2.PULL_REQUEST_STATE_MERGED, pull_request_pb2.PULL_REQUEST_STATE_CLOSED):
            summary = pull_request_pb2.PullRequestSummary.FromString(task.pull_request)
            summary.state = final
            encoded = summary.SerializeToString(deterministic=True)
        if encoded == task.pull_request:
            return
        task.pull_request = encoded
        await task_changed(session, deps, task)
