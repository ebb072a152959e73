"""Apply task and github-data events to the organization summary projection.

Every event names an entity and its version; `accept_version` lets through only a version newer
than the one applied before, so redeliveries and late older events change nothing. Each accepted
event writes its rows and records the resulting Watch changes in the caller's transaction.

Lock order (PostgreSQL): the entity's version row, task summary rows, task index rows, repository
rows (sorted by name), then the watch scope row last — every apply follows it, so concurrent
applies for one organization queue instead of deadlocking.

A pull request on a branch that no task owns becomes a VIRTUAL task summary (id from
`virtual_task_id`), which exists only here; it is dropped when the pull request closes and handed
over when a task reserves the branch with mode EXISTING or the task service publishes its summary.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from foundry.github_data.v1 import events_pb2 as gh_events
from foundry.github_data.v1 import pull_request_pb2 as pr_pb2
from foundry.organization.v1 import organization_summary_pb2 as summary_pb2
from foundry.task.v1 import events_pb2 as task_events
from foundry.task.v1 import task_pb2
from google.protobuf.message import DecodeError, Message
from sqlalchemy.ext.asyncio import AsyncSession

from services.organization.convert import timestamp, to_time
from services.organization.domain.errors import DOMAIN
from services.organization.domain.names import (
    parse_child,
    parse_organization,
    parse_pull_request,
    summary_scope,
    sync_status_name,
    virtual_task_id,
)
from services.organization.store import projection as q
from services.organization.store import task_index as ix
from services.organization.usecases import app_feed
from services.platform import clock
from services.platform.errors import InvalidArgument
from services.platform.watch import record_change

TASK_UPDATED = "task.summary.updated"
TASK_REMOVED = "task.summary.removed"
PR_CHANGED = "github_data.pull_request.changed"
PR_REMOVED = "github_data.pull_request.removed"
REPO_CHANGED = "github_data.repository.changed"
REPO_REMOVED = "github_data.repository.removed"
SYNC_PROGRESS = "github_data.sync.progress"
ROUTING_KEYS = (TASK_UPDATED, TASK_REMOVED, PR_CHANGED, PR_REMOVED, REPO_CHANGED, REPO_REMOVED, SYNC_PROGRESS)

# Tasks in these statuses stay listed but do not count toward their repository's task_count.
UNCOUNTED = frozenset({task_pb2.TASK_STATUS_ARCHIVED, task_pb2.TASK_STATUS_KILLED})
_OPEN_STATES = frozenset(
    {pr_pb2.PULL_REQUEST_STATE_OPEN, pr_pb2.PULL_REQUEST_STATE_DRAFT, pr_pb2.PULL_REQUEST_STATE_UNSPECIFIED}
)


@dataclass
class _Effects:
    """What one event changed: Watch changes to record and repositories to recount, applied last."""

    org_id: str
    changes: list[tuple[str, Message | None]] = field(default_factory=list)
    repositories: dict[str, str] = field(default_factory=dict)  # name -> full name hint
    forced: set[str] = field(default_factory=set)  # repositories whose own metadata changed
    organization_changed: bool = False

    def touch(self, repository: str, full_name: str = "", *, force: bool = False) -> None:
        if repository:
            self.repositories[repository] = self.repositories.get(repository) or full_name
            if force:
                self.forced.add(repository)


async def apply_event(session: AsyncSession, *, routing_key: str, body: bytes) -> bool:
    """Apply one event (its routing key and serialized message) inside the caller's transaction.

    Returns:
        True when the event changed the projection, False when it was a repeated or older version.

    Raises:
        InvalidArgument: unknown routing key, undecodable body or malformed resource names (the
            message can never succeed: the worker dead-letters it).
    """
    apply = _APPLIERS.get(routing_key)
    if apply is None:
        raise InvalidArgument(
            f"no projection rule for routing key {routing_key!r}", domain=DOMAIN, reason="UNKNOWN_EVENT"
        )
    try:
        effects = await apply(session, body)
    except DecodeError as exc:
        raise InvalidArgument(
            f"{routing_key}: undecodable body ({exc})", domain=DOMAIN, reason="MALFORMED_EVENT"
        ) from exc
    if effects is None:
        return False
    await _finish(session, effects)
    return True


# -- tasks ---------------------------------------------------------------------------------------


async def _task_updated(session: AsyncSession, body: bytes) -> _Effects | None:
    event = task_events.TaskSummaryChanged.FromString(body)
    org_id, task_id = parse_child(event.name, "tasks")
    if not await q.accept_version(session, name=event.name, version=event.version):
        return None
    summary = task_pb2.TaskSummary()
    summary.CopyFrom(event.task_summary)
    summary.name = event.name
    for s in summary.sessions:  # the shared copy carries no per-user state
        s.unread = False
    effects = _Effects(org_id)
    old = await q.get_task_summary(session, org_id=org_id, task_id=task_id)
    await q.put_task_summary(
        session,
        org_id=org_id,
        task_id=task_id,
        repository=summary.repository,
        counted=summary.status not in UNCOUNTED,
        update_time=to_time(summary.update_time) or clock.now(),
        summary=summary.SerializeToString(),
    )
    entry = await ix.get_entry(session, org_id=org_id, task_id=task_id)
    if entry is not None and entry.virtual:  # the task service materialized the virtual task
        await ix.update_entry(session, org_id=org_id, task_id=task_id, virtual=False, update_time=clock.now())
    effects.changes.append((event.name, summary))
    effects.touch(summary.repository, summary.repository_full_name)
    if old is not None and old.repository != summary.repository:
        effects.touch(old.repository)
    return effects


async def _task_removed(session: AsyncSession, body: bytes) -> _Effects | None:
    event = task_events.TaskSummaryRemoved.FromString(body)
    org_id, task_id = parse_child(event.name, "tasks")
    if not await q.accept_version(session, name=event.name, version=event.version):
        return None
    effects = _Effects(org_id)
    old = await q.get_task_summary(session, org_id=org_id, task_id=task_id)
    if old is not None:
        await q.delete_task_summary(session, org_id=org_id, task_id=task_id)
        effects.changes.append((event.name, None))
        effects.touch(old.repository)
    await ix.delete_entry(session, org_id=org_id, task_id=task_id)  # a removed task owns no branch
    effects.touch(event.repository)
    return effects


# -- pull requests -------------------------------------------------------------------------------


def virtual_summary(org_id: str, task_id: str, pr: pr_pb2.PullRequestSummary) -> task_pb2.TaskSummary:
    """The summary of the virtual task standing for `pr` until a real task owns its branch."""
    summary = task_pb2.TaskSummary(
        name=f"organizations/{org_id}/tasks/{task_id}",
        repository=pr.repository,
        repository_full_name=pr.repository_full_name,
        title=pr.title or pr.head_branch,
        status=task_pb2.TASK_STATUS_VIRTUAL,
        branch=pr.head_branch,
        pull_request=pr,
        virtual=True,
    )
    summary.update_time.CopyFrom(pr.update_time if to_time(pr.update_time) else timestamp(clock.now()))
    return summary


async def _pr_changed(session: AsyncSession, body: bytes) -> _Effects | None:
    event = gh_events.PullRequestChanged.FromString(body)
    org_id, repository = parse_pull_request(event.name)
    if not await q.accept_version(session, name=event.name, version=event.version):
        return None
    pr = pr_pb2.PullRequestSummary()
    pr.CopyFrom(event.summary)
    pr.name, pr.repository = event.name, repository
    if pr.state not in _OPEN_STATES:  # not open any more: same as a removal
        return await _pr_gone(session, org_id, event.name, repository, pr.head_branch)
    effects = _Effects(org_id)
    await q.put_open_pull_request(
        session,
        name=event.name,
        org_id=org_id,
        repository=repository,
        head_branch=pr.head_branch,
        update_time=to_time(pr.update_time) or clock.EPOCH,
        summary=pr.SerializeToString(),
    )
    effects.changes.append((event.name, pr))
    if not pr.head_branch:
        return effects
    entry = await ix.get_entry_by_branch(session, org_id=org_id, repository=repository, branch=pr.head_branch)
    now = clock.now()
    if entry is None or entry.virtual:
        task_id = entry.task_id if entry is not None else virtual_task_id(repository, pr.head_branch)
        summary = virtual_summary(org_id, task_id, pr)
        await q.put_task_summary(
            session,
            org_id=org_id,
            task_id=task_id,
            repository=repository,
            counted=True,
            update_time=to_time(summary.update_time) or now,
            summary=summary.SerializeToString(),
        )
        if entry is None:
            await ix.insert_entry(
                session,
                org_id=org_id,
                task_id=task_id,
                repository=repository,
                branch=pr.head_branch,
                title=summary.title,
                virtual=True,
                pull_request=pr.SerializeToString(),
                now=now,
            )
        else:
            await ix.update_entry(
                session,
                org_id=org_id,
                task_id=task_id,
                title=summary.title,
                pull_request=pr.SerializeToString(),
                update_time=now,
            )
        effects.changes.append((summary.name, summary))
        effects.touch(repository, pr.repository_full_name)
    else:  # a real task owns the branch; the task service keeps its summary's pull request
        await ix.update_entry(
            session,
            org_id=org_id,
            task_id=entry.task_id,
            pull_request=pr.SerializeToString(),
            update_time=now,
        )
    return effects


async def _pr_removed(session: AsyncSession, body: bytes) -> _Effects | None:
    event = gh_events.PullRequestRemoved.FromString(body)
    org_id, repository = parse_pull_request(event.name)
    if not await q.accept_version(session, name=event.name, version=event.version):
        return None
    branch = event.head_branch or event.pull_request.head_branch
    return await _pr_gone(session, org_id, event.name, repository, branch)


async def _pr_gone(session: AsyncSession, org_id: str, name: str, repository: str, branch: str) -> _Effects:
    effects = _Effects(org_id)
    if await q.delete_open_pull_request(session, name=name):
        effects.changes.append((name, None))
    if not branch:
        return effects
    entry = await ix.get_entry_by_branch(session, org_id=org_id, repository=repository, branch=branch)
    if entry is None:
        return effects
    if entry.virtual:  # the virtual task only stood for this pull request
        await q.delete_task_summary(session, org_id=org_id, task_id=entry.task_id)
        await ix.delete_entry(session, org_id=org_id, task_id=entry.task_id)
        effects.changes.append((f"organizations/{org_id}/tasks/{entry.task_id}", None))
        effects.touch(repository)
    else:
        await ix.update_entry(
            session, org_id=org_id, task_id=entry.task_id, pull_request=None, update_time=clock.now()
        )
    return effects


# -- repositories and sync status ----------------------------------------------------------------


async def _repo_changed(session: AsyncSession, body: bytes) -> _Effects | None:
    event = gh_events.RepositoryChanged.FromString(body)
    org_id, _ = parse_child(event.name, "repositories")
    if not await q.accept_version(session, name=event.name, version=event.version):
        return None
    repo = event.repository
    own = to_time(repo.provider_update_time) or to_time(repo.update_time) or clock.EPOCH
    row = await q.get_repository(session, org_id=org_id, name=event.name)
    await q.put_repository(
        session,
        org_id=org_id,
        name=event.name,
        full_name=repo.full_name,
        default_branch=repo.default_branch,
        listed=True,
        own_update_time=own,
        task_count=row.task_count if row else 0,
        latest_activity_time=row.latest_activity_time if row else own,
    )
    effects = _Effects(org_id)
    effects.touch(event.name, repo.full_name, force=True)
    return effects


async def _repo_removed(session: AsyncSession, body: bytes) -> _Effects | None:
    event = gh_events.RepositoryRemoved.FromString(body)
    org_id, _ = parse_child(event.name, "repositories")
    if not await q.accept_version(session, name=event.name, version=event.version):
        return None
    effects = _Effects(org_id)
    row = await q.get_repository(session, org_id=org_id, name=event.name)
    if row is not None:
        await q.update_repository(session, org_id=org_id, name=event.name, listed=False)
        effects.touch(event.name, force=True)
    return effects


async def _sync_progress(session: AsyncSession, body: bytes) -> _Effects | None:
    event = gh_events.SyncProgress.FromString(body)
    parts = event.name.split("/")
    org_id = parse_organization("/".join(parts[:2]))
    if event.name != sync_status_name(org_id):
        raise InvalidArgument("name: must be organizations/{organization}/syncStatus", domain=DOMAIN)
    if not await q.accept_version(session, name=event.name, version=event.version):
        return None
    status = event.sync_status
    status.name = event.name
    await q.put_sync_status(session, org_id=org_id, status=status.SerializeToString())
    effects = _Effects(org_id, organization_changed=True)
    effects.changes.append((event.name, status))
    return effects


_APPLIERS: dict[str, Callable[[AsyncSession, bytes], Awaitable[_Effects | None]]] = {
    TASK_UPDATED: _task_updated,
    TASK_REMOVED: _task_removed,
    PR_CHANGED: _pr_changed,
    PR_REMOVED: _pr_removed,
    REPO_CHANGED: _repo_changed,
    REPO_REMOVED: _repo_removed,
    SYNC_PROGRESS: _sync_progress,
}


# -- repository counts and watch changes ---------------------------------------------------------


def repository_summary(row: Any) -> summary_pb2.RepositorySummary:
    """A repositories row → RepositorySummary."""
    summary = summary_pb2.RepositorySummary(
        name=row.name, full_name=row.full_name, default_branch=row.default_branch, task_count=row.task_count
    )
    summary.latest_activity_time.CopyFrom(timestamp(row.latest_activity_time))
    return summary


async def _finish(session: AsyncSession, effects: _Effects) -> None:
    org_id = effects.org_id
    for name in sorted(effects.repositories):
        change = await recount_repository(
            session, org_id, name, effects.repositories[name], force=name in effects.forced
        )
        if change is not None:
            effects.changes.append(change)
    scope = summary_scope(org_id)
    for name, resource in effects.changes:
        await record_change(session, scope=scope, name=name, resource=resource)
    if effects.organization_changed:
        await app_feed.organization_changed(session, org_id=org_id)


async def recount_repository(
    session: AsyncSession, org_id: str, name: str, full_name: str, *, force: bool
) -> tuple[str, Message | None] | None:
    """Refresh one repository's task count and latest activity; the Watch change it needs, if any.

    The repository row is locked (created as an unlisted placeholder if missing) before counting.
    A repository is shown while it is listed by github-data or has counted tasks; one that stops
    being shown is deleted (a DELETE item when it was shown before).
    """
    row = await q.lock_repository(
        session, org_id=org_id, name=name, full_name=full_name or name.rsplit("/", 1)[-1]
    )
    count, latest_task = await q.repository_task_stats(session, org_id=org_id, repository=name)
    latest = latest_task or row.own_update_time
    visible_before = row.listed or row.task_count > 0
    visible_after = row.listed or count > 0
    if not visible_after:
        await q.delete_repository(session, org_id=org_id, name=name)
        return (name, None) if visible_before or force else None
    if not force and count == row.task_count and latest == row.latest_activity_time:
        return None
    await q.update_repository(
        session, org_id=org_id, name=name, task_count=count, latest_activity_time=latest
    )
    summary = repository_summary(row)
    summary.task_count = count
    summary.latest_activity_time.CopyFrom(timestamp(latest))
    return name, summary
