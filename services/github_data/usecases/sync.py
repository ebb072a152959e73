"""The full sync of one organization (work item RunSync), resumable from durable state.

Phases, each announced as SyncProgress:

    discovering_repositories  claim the job, resolve the provider and credentials
    syncing_repositories      list repositories, upsert them with the generation
    syncing_members           list members, upsert, sweep members of older generations
                              (GithubMemberChanged / GithubMemberRemoved for real changes)
    syncing_pull_requests     repositories in batches of 10 (by full name), open pull requests
                              100 per page, one commit per batch; `processed` is the resume cursor
    finalize                  sweep repositories and pull requests of older generations, `synced`

Idempotency: a RunSync for another generation, or for a job no longer queued/running, is dropped.
One runner per job, across replicas and restarts: claiming writes a fresh `job_token` and a lease
(`job_lease_until`, SYNC_LEASE_SECONDS), which the runner renews every third of it while it runs and
hands back when a stop cancels it. A RunSync for a job whose lease is live (a redelivery, the
re-enqueue at start-up, a second replica) is dropped; a runner that died (kill -9) is taken over once
its lease lapses, by the sweep (`resume_jobs(only_stalled=True)`) that re-enqueues it. Every write
of a runner is still fenced on its token, so one that lost its lease (stalled past it) stops at its
next write. A resumed job restarts at its stored phase (the pull request phase at its `processed`
cursor). Provider failures end the sync in `error` with the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from typing import Any

from services.github_data.domain.models import (
    PHASES,
    PR_BATCH_SIZE,
    SYNC_LEASE_SECONDS,
    Connection,
    GithubMember,
    Repository,
    SyncPhase,
)
from services.github_data.domain.ports import Provider, ProviderError, RemoteRepository
from services.github_data.providers import open_provider
from services.github_data.store import queries
from services.github_data.usecases.connections import enqueue_sync
from services.github_data.usecases.deps import Deps
from services.github_data.usecases.upserts import (
    announce_removed,
    remove_member,
    upsert_member,
    upsert_pull_request,
    upsert_repository,
)
from services.platform.aio import periodically
from services.platform.logging import get_logger

log = get_logger(__name__)


class Superseded(Exception):
    """Another runner claimed this job (or it was cancelled): stop without writing."""


def pr_label(done: int, total: int) -> str:
    return f"Synced pull requests for {done} of {total} repositories"


def done_label(count: int) -> str:
    if count == 0:
        return "No repositories available"
    return f"Synced {count} repositor{'y' if count == 1 else 'ies'}"


class SyncRun:
    """One runner of one (organization, generation) job."""

    def __init__(
        self, deps: Deps, org: str, generation: int, *, lease_seconds: float = SYNC_LEASE_SECONDS
    ) -> None:
        self.deps = deps
        self.org = org
        self.generation = generation
        self.token = uuid.uuid4().hex
        self.lease = dt.timedelta(seconds=lease_seconds)

    async def _step(self, values: dict[str, Any], *, session: Any = None) -> None:
        """Fenced status write + SyncProgress (in `session`, or a transaction of its own)."""
        values = {**values, "update_time": self.deps.now()}
        if session is not None:
            if not await queries.update_status(session, org=self.org, values=values, token=self.token):
                raise Superseded
            await self.deps.events.sync_progress(session, self.org)
            return
        async with self.deps.db.transaction() as own:
            await self._step(values, session=own)

    async def claim(self) -> tuple[Connection, SyncPhase | None, int] | None:
        """Take the job; returns (connection, phase to resume at, processed cursor), or None to drop."""
        async with self.deps.db.transaction() as session:
            before = await queries.get_status(session, org=self.org, with_counts=False)
            now = self.deps.now()
            claimed = await queries.update_status(
                session,
                org=self.org,
                where_generation=self.generation,
                where_job_states=("queued", "running"),
                where_lease_lapsed_at=now,
                values={
                    "job_state": "running",
                    "job_token": self.token,
                    "job_lease_until": now + self.lease,
                    "state": "syncing",
                    "update_time": now,
                },
            )
            if not claimed or before is None:
                if before is not None and before.generation == self.generation and before.job_active:
                    log.info("sync_held_elsewhere", organization=self.org, generation=self.generation)
                return None
            conn = await queries.get_connection(session, org=self.org)
            if conn is None:
                return None
            if before.job_state == "queued" or before.phase is None:
                await queries.update_status(
                    session, org=self.org, token=self.token, values={"job_started_at": self.deps.now()}
                )
                return conn, None, 0
            return conn, before.phase, before.processed

    async def run(self) -> None:
        claimed = await self.claim()
        if claimed is None:
            log.info("sync_dropped", organization=self.org, generation=self.generation)
            return
        try:
            # Renewed every third of the lease, never cut off in its transaction.
            async with periodically(
                self.lease.total_seconds() / 3, self._renew_lease, name=f"sync-lease:{self.org}"
            ):
                await self._run(*claimed)
        except asyncio.CancelledError:  # a stop: hand the job back so the next runner need not wait
            with contextlib.suppress(Exception):
                await asyncio.shield(self._hand_back())
            raise

    async def _renew_lease(self) -> bool:
        """One renewal; False once the job is no longer ours (the runner then stops at its next
        write). A failure only shortens the lease: logged, and the next renewal may succeed."""
        try:
            async with self.deps.db.transaction() as session:
                until = self.deps.now() + self.lease
                return await queries.renew_lease(session, org=self.org, token=self.token, until=until)
        except Exception:
            log.warning("sync_lease_renew_failed", organization=self.org, exc_info=True)
            return True

    async def _hand_back(self) -> None:
        async with self.deps.db.transaction() as session:
            await queries.renew_lease(session, org=self.org, token=self.token, until=None)
        log.info("sync_lease_handed_back", organization=self.org, generation=self.generation)

    async def _run(self, conn: Connection, phase: SyncPhase | None, cursor: int) -> None:
        start = PHASES.index(phase) if phase else 0
        log.info(
            "sync_started",
            organization=self.org,
            generation=self.generation,
            resume_phase=phase,
            cursor=cursor,
        )
        try:
            if start < 3:  # resuming the pull request phase keeps its cursor
                await self._step(
                    {
                        "phase": "discovering_repositories",
                        "label": _discover_label(conn),
                        "processed": 0,
                        "total": 0,
                    }
                )
            async with open_provider(
                conn, self.deps.github, self.deps.tokens, retry=self.deps.retry
            ) as provider:
                if start <= 1:
                    await self._repositories(provider)
                if start <= 2:
                    await self._members(provider)
                await self._pull_requests(provider, skip=cursor if start == 3 else 0)
            await self._finalize()
        except Superseded:
            log.info("sync_superseded", organization=self.org, generation=self.generation)
        except ProviderError as exc:
            await self._fail(exc.message)
        except Exception as exc:
            log.exception("sync_failed", organization=self.org, generation=self.generation)
            await self._fail(f"Sync failed: {type(exc).__name__}: {exc}")

    async def _repositories(self, provider: Provider) -> None:
        remote = await provider.list_repositories()
        async with self.deps.db.transaction() as session:
            await self._step(
                {
                    "phase": "syncing_repositories",
                    "label": f"Importing {len(remote)} repositories...",
                    "processed": 0,
                    "total": len(remote),
                },
                session=session,
            )
            now = self.deps.now()
            for item in remote:
                await upsert_repository(
                    session, self.deps.events, org=self.org, remote=item, generation=self.generation, now=now
                )
            await self._step({"processed": len(remote)}, session=session)

    async def _members(self, provider: Provider) -> None:
        await self._step({"phase": "syncing_members", "label": "Syncing members..."})
        members = await provider.list_members()
        async with self.deps.db.transaction() as session:
            now = self.deps.now()
            await self._step({"label": f"Synced {len(members)} members"}, session=session)
            for m in members:
                await upsert_member(
                    session,
                    self.deps.events,
                    now=now,
                    member=GithubMember(
                        organization=self.org,
                        member_id=m.member_id,
                        login=m.login,
                        display_name=m.display_name,
                        email=m.email,
                        avatar_url=m.avatar_url,
                        role=m.role,
                        state=m.state,
                        sync_generation=self.generation,
                    ),
                )
            for gone in await queries.stale_members(session, org=self.org, keep_generation=self.generation):
                await remove_member(session, self.deps.events, org=self.org, member_id=gone.member_id)

    async def _pull_requests(self, provider: Provider, *, skip: int) -> None:
        async with self.deps.db.snapshot() as session:
            repos = await queries.list_repositories(session, org=self.org, generation=self.generation)
        total = len(repos)
        skip = min(skip, total)
        await self._step(
            {
                "phase": "syncing_pull_requests",
                "label": pr_label(skip, total),
                "processed": skip,
                "total": total,
            }
        )
        for start in range(skip, total, PR_BATCH_SIZE):
            batch = repos[start : start + PR_BATCH_SIZE]
            listed = await asyncio.gather(*(provider.list_open_pull_requests(_remote(r)) for r in batch))
            done = start + len(batch)
            async with self.deps.db.transaction() as session:
                await self._step({"processed": done, "label": pr_label(done, total)}, session=session)
                now = self.deps.now()
                for repo, prs in zip(batch, listed, strict=True):
                    for pr in prs:
                        await upsert_pull_request(
                            session,
                            self.deps.events,
                            org=self.org,
                            repo=repo,
                            remote=pr,
                            generation=self.generation,
                            now=now,
                        )

    async def _finalize(self) -> None:
        async with self.deps.db.transaction() as session:
            if not await queries.update_status(session, org=self.org, token=self.token, values={}):
                raise Superseded
            repos = await queries.delete_repositories(session, org=self.org, keep_generation=self.generation)
            prs = await queries.delete_pull_requests(
                session, org=self.org, keep_generation=self.generation, repo_ids=[r.repo_id for r in repos]
            )
            await announce_removed(session, self.deps.events, org=self.org, prs=prs, repos=repos)
            count, _ = await queries.counts(session, org=self.org)
            started = await queries.job_started_at(session, org=self.org)
            await self._step(
                {
                    "state": "synced",
                    "phase": None,
                    "label": done_label(count),
                    "last_sync_time": started or self.deps.now(),
                    "job_state": "idle",
                    "job_token": None,
                    "job_lease_until": None,
                    "error_message": "",
                },
                session=session,
            )
            await self._follow_up(session)
        log.info(
            "sync_finished",
            organization=self.org,
            generation=self.generation,
            repositories=count,
            swept_repositories=len(repos),
            swept_pull_requests=len(prs),
        )

    async def _follow_up(self, session: Any) -> None:
        """Queue the sync asked for while this one ran (`connections.enqueue_sync`), in the
        transaction that ends this one: the request may have come after this one listed what changed."""
        reason = await queries.take_rerun(session, org=self.org)
        why = f"asked for during the last sync: {reason}"
        if reason and await enqueue_sync(session, self.deps, self.org, why):
            await self.deps.events.sync_progress(session, self.org)

    async def _fail(self, message: str) -> None:
        log.warning("sync_error", organization=self.org, generation=self.generation, error=message)
        try:
            async with self.deps.db.transaction() as session:
                await self._step(
                    {
                        "state": "error",
                        "phase": None,
                        "label": message,
                        "error_message": message,
                        "processed": 0,
                        "total": 0,
                        "job_state": "idle",
                        "job_token": None,
                        "job_lease_until": None,
                    },
                    session=session,
                )
                await self._follow_up(session)
        except Superseded:
            log.info("sync_superseded", organization=self.org, generation=self.generation)


def _discover_label(conn: Connection) -> str:
    return f"Scanning {conn.root_path}..." if conn.provider == "local" else "Syncing GitHub data..."


def _remote(repo: Repository) -> RemoteRepository:
    return RemoteRepository(
        full_name=repo.full_name, clone_url=repo.clone_url, default_branch=repo.default_branch
    )


async def run_sync(deps: Deps, org: str, generation: int) -> None:
    """Run or resume the sync job of (`org`, `generation`); a stale or finished job is dropped."""
    await SyncRun(deps, org, generation).run()
