"""Connecting organizations, asking for syncs, clearing state, and resuming syncs after a restart.

A sync request never runs the sync: it bumps the generation, marks the job `queued`, writes the
RunSync work item and a SyncProgress event in one transaction, and returns. While a job is queued,
another request returns the current status (the queued sync will see what is there when it starts).
While one runs, it may have listed the repositories before the change that prompted the request
("Sync now" after adding a repository): the request is recorded (`job_rerun`) and a new sync is
queued when the running one ends (`sync.SyncRun`), one however many requests came meanwhile.
"""

from __future__ import annotations

import os
from dataclasses import replace

from sqlalchemy.ext.asyncio import AsyncSession

from services.github_data.domain.models import Connection, InstallationStatus, SyncStatus
from services.github_data.domain.names import DOMAIN
from services.github_data.store import queries
from services.github_data.usecases.deps import Deps
from services.github_data.usecases.upserts import announce_removed
from services.platform.errors import FailedPrecondition, InvalidArgument, NotFound
from services.platform.logging import get_logger

log = get_logger(__name__)
QUEUED_LABEL = "Sync queued"


def _check_local_root(root: str) -> str:
    """The normalized root; raises InvalidArgument unless it is an absolute readable directory."""
    field = "connection.local.root_path"
    if not os.path.isabs(root):
        raise InvalidArgument(
            f"{field}: {root!r} is not an absolute path",
            reason="INVALID_ROOT_PATH",
            domain=DOMAIN,
            field_violations={field: "must be an absolute path"},
        )
    root = os.path.normpath(root)
    if not os.path.isdir(root) or not os.access(root, os.R_OK | os.X_OK):
        raise InvalidArgument(
            f"{field}: {root!r} is not a readable directory",
            reason="INVALID_ROOT_PATH",
            domain=DOMAIN,
            field_violations={field: "must be a readable directory"},
        )
    return root


async def enqueue_sync(session: AsyncSession, deps: Deps, org: str, reason: str) -> bool:
    """Queue a full sync of `org` in the caller's transaction unless one is queued; while one runs,
    record the request so that a new sync follows it (see the module docstring).

    Returns True when a new sync was queued. The caller publishes SyncProgress.
    """
    status = await queries.get_status(session, org=org, with_counts=False)
    assert status is not None
    if status.job_state == "running":
        if await queries.request_rerun(session, org=org, reason=reason):
            log.info("sync_rerun_requested", organization=org, generation=status.generation, reason=reason)
            return False
        # Not recorded: one is recorded already, or the sync ended since the read above (on PostgreSQL
        # the update waited for its closing transaction, then found it idle). Look again.
        status = await queries.get_status(session, org=org, with_counts=False)
        assert status is not None
    if status.job_active:
        return False
    generation = status.generation + 1
    await queries.update_status(
        session,
        org=org,
        values={
            "state": "pending",
            "phase": None,
            "label": QUEUED_LABEL,
            "processed": 0,
            "total": 0,
            "generation": generation,
            "job_state": "queued",
            "job_token": None,
            "job_lease_until": None,
            "job_reason": reason,
            "job_started_at": None,
            "error_message": "",
            "update_time": deps.now(),
        },
    )
    await deps.events.enqueue_sync(session, org, generation)
    log.info("sync_enqueued", organization=org, generation=generation, reason=reason)
    return True


async def connect(deps: Deps, connection: Connection) -> tuple[Connection, SyncStatus]:
    """Create or update the connection of `connection.organization` and queue its first sync.

    Connecting again with the same settings changes nothing and queues nothing.
    Raises InvalidArgument (INVALID_ROOT_PATH) for a local root that is not a readable directory.
    """
    if connection.provider == "local":
        connection = replace(connection, root_path=_check_local_root(connection.root_path))
    org = connection.organization
    async with deps.db.transaction() as session:
        existing = await queries.get_connection(session, org=org)
        if existing is not None and existing.same_settings(connection):
            status = await queries.get_status(session, org=org)
            assert status is not None
            return existing, status
        stored = await queries.save_connection(session, connection=connection, now=deps.now())
        if existing is None:
            await queries.create_status(session, org=org, now=deps.now())
        await enqueue_sync(
            session, deps, org, "first connection" if existing is None else "connection changed"
        )
        status = await deps.events.sync_progress(session, org)
    return stored, status


async def get_connection(deps: Deps, org: str) -> Connection:
    """Raises NotFound (CONNECTION_NOT_FOUND) when the organization was never connected."""
    async with deps.db.snapshot() as session:
        conn = await queries.get_connection(session, org=org)
    if conn is None:
        raise NotFound(f"organizations/{org} is not connected", reason="CONNECTION_NOT_FOUND", domain=DOMAIN)
    return conn


async def request_sync(deps: Deps, org: str, reason: str) -> tuple[SyncStatus, bool]:
    """Queue a full sync; returns (status, enqueued). Raises FailedPrecondition (NOT_CONNECTED)."""
    async with deps.db.transaction() as session:
        if await queries.get_connection(session, org=org) is None:
            raise FailedPrecondition(
                f"organizations/{org} is not connected", reason="NOT_CONNECTED", domain=DOMAIN
            )
        enqueued = await enqueue_sync(session, deps, org, reason or "requested")
        if enqueued:
            status = await deps.events.sync_progress(session, org)
        else:
            found = await queries.get_status(session, org=org)
            assert found is not None
            status = found
    return status, enqueued


async def clear_state(
    session: AsyncSession, deps: Deps, org: str, installation_status: InstallationStatus, reason: str
) -> None:
    """Delete repositories, pull requests and members (announcing each removal), cancel any running
    sync (its next fenced write fails) and record `installation_status`. Caller publishes progress."""
    now = deps.now()
    await queries.set_installation(
        session, org=org, status=installation_status, installation_id=None, now=now
    )
    await queries.update_status(
        session,
        org=org,
        values={
            "state": "pending",
            "phase": None,
            "label": reason,
            "processed": 0,
            "total": 0,
            "job_state": "idle",
            "job_token": None,
            "job_lease_until": None,
            "job_rerun": "",
            "error_message": "",
            "update_time": now,
        },
    )
    prs = await queries.delete_pull_requests(session, org=org, keep_generation=None)
    repos = await queries.delete_repositories(session, org=org, keep_generation=None)
    await queries.delete_members(session, org=org, keep_generation=None)
    await announce_removed(session, deps.events, org=org, prs=prs, repos=repos)
    log.info(
        "state_cleared",
        organization=org,
        installation_status=installation_status,
        pull_requests=len(prs),
        repositories=len(repos),
    )


async def disconnect(
    deps: Deps, org: str, installation_status: InstallationStatus, reason: str
) -> tuple[Connection, SyncStatus]:
    """Clear an organization's data and record why. Raises NotFound when never connected."""
    async with deps.db.transaction() as session:
        if await queries.get_connection(session, org=org) is None:
            raise NotFound(
                f"organizations/{org} is not connected", reason="CONNECTION_NOT_FOUND", domain=DOMAIN
            )
        default = (
            "GitHub App uninstalled" if installation_status == "install_required" else "Reconnect GitHub"
        )
        await clear_state(session, deps, org, installation_status, reason or default)
        status = await deps.events.sync_progress(session, org)
        conn = await queries.get_connection(session, org=org)
        assert conn is not None
    return conn, status


async def resume_jobs(deps: Deps, *, only_stalled: bool = False) -> int:
    """Re-enqueue every sync left queued, or running without a live lease (its process stopped or was
    killed), at start-up; with `only_stalled` (the periodic sweep), only running syncs whose lease
    lapsed. A job whose runner still renews its lease (another replica) is left to it: a work item
    for it would be dropped anyway (`SyncRun.claim`). Returns the number re-enqueued."""
    at = deps.now()
    async with deps.db.transaction() as session:
        if only_stalled:
            jobs = await queries.stalled_jobs(session, lease_lapsed_at=at)
        else:
            jobs = await queries.active_jobs(session, lease_lapsed_at=at)
        for org, generation in jobs:
            await deps.events.enqueue_sync(session, org, generation)
    for org, generation in jobs:
        log.info("sync_resumed", organization=org, generation=generation, stalled=only_stalled)
    return len(jobs)
