"""Apply the sandbox service's events to tasks: turn ends, git state, agent-session failures, and
pull requests from github-data."""

from __future__ import annotations

import datetime as dt

from foundry.github_data.v1 import events_pb2 as gd_events
from foundry.github_data.v1 import pull_request_pb2
from foundry.sandbox.v1 import agent_session_pb2
from foundry.sandbox.v1 import events_pb2 as sb_events
from prometheus_client import Histogram

from services.task.domain import names
from services.task.domain.models import now
from services.task.store import queries
from services.task.usecases.changes import task_changed
from services.task.usecases.deps import Deps
from services.task.usecases.first_turn import first_message_id
from services.task.usecases.sessions import apply_turn_end

FIRST_OUTPUT_SECONDS = Histogram(
    "foundry_task_first_output_seconds",
    "Time from CreateTask to the agent's first output on the task's prompt (its first turn), by agent",
    ["agent"],
    buckets=(0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300),
)


async def on_turn_completed(deps: Deps, event: sb_events.TurnCompleted) -> None:
    parsed = names.turn(event.turn.name)
    if parsed is None:
        return
    org, sandbox_id, session_id, turn_id = parsed
    if turn_id == first_message_id(session_id) and event.HasField("first_output_time"):
        await _observe_first_output(deps, org, sandbox_id, event.first_output_time.ToDatetime(dt.UTC))
    await apply_turn_end(deps, event.turn)


async def _observe_first_output(deps: Deps, org: str, task_id: str, first_output: dt.datetime) -> None:
    """The task's prompt turn ended having answered: observe create → first output (a redelivered
    TurnCompleted observes again; at-least-once, like every metric fed by a queue)."""
    async with deps.db.transaction() as session:
        task = await queries.get_task(session, task_id=task_id, organization=org)
    if task is not None:
        seconds = max(0.0, (first_output - task.created_at).total_seconds())
        FIRST_OUTPUT_SECONDS.labels(agent=task.agent or "default").observe(seconds)


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


async def on_pull_request_changed(deps: Deps, event: gd_events.PullRequestChanged) -> None:
    """Store the summary of the pull request (as github_data derived it) on the live task owning its
    head branch."""
    pr = event.summary
    async with deps.db.transaction() as session:
        task = await queries.find_task_by_branch(session, repository=pr.repository, branch=pr.head_branch)
        if task is None:
            return
        task = await queries.get_task(session, task_id=task.id, lock=True)
        if task is None:
            return
        encoded = pr.SerializeToString(deterministic=True)
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
