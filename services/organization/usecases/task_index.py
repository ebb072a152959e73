"""The task index: branch reservations unique per repository, and virtual-task hand-over."""

from __future__ import annotations

import datetime as dt
from typing import Any

from foundry.organization.v1 import task_index_pb2
from sqlalchemy.exc import IntegrityError

from services.organization import convert
from services.organization.domain.branches import generated_branch
from services.organization.domain.errors import DOMAIN, branch_taken, precondition
from services.organization.domain.names import (
    check_branch,
    organization_name,
    parse_child,
    parse_organization,
    summary_scope,
)
from services.organization.store import projection as q
from services.organization.store import task_index as ix
from services.organization.usecases.projection.apply import recount_repository
from services.platform import clock
from services.platform.authz import Membership
from services.platform.db import Database
from services.platform.errors import NotFound, require
from services.platform.watch import record_change

EXACT = task_index_pb2.BRANCH_RESERVATION_MODE_EXACT
EXISTING = task_index_pb2.BRANCH_RESERVATION_MODE_EXISTING
GENERATE = task_index_pb2.BRANCH_RESERVATION_MODE_GENERATE
_GENERATE_TRIES = 20


class _BranchInUse(Exception):
    """A generated branch candidate is taken: try another one."""


def _not_found(name: str) -> NotFound:
    return NotFound(f"task index entry {name} not found", reason="TASK_INDEX_ENTRY_NOT_FOUND", domain=DOMAIN)


class TaskIndex:
    """ReserveTaskBranch, ReleaseTaskBranch, GetTaskIndexEntry, ListTaskIndexEntries."""

    def __init__(self, db: Database, membership: Membership) -> None:
        self._db = db
        self._membership = membership

    async def reserve(
        self, *, parent: str, task_id: str, repository: str, branch: str, mode: int, title: str
    ) -> task_index_pb2.TaskIndexEntry:
        """Reserve `branch` of `repository` for task `task_id`.

        Modes: EXACT (fail if any task of the repository has it), EXISTING (fail if another real
        task owns it; a virtual task is handed over), GENERATE (`branch` is a prefix; a free
        `<prefix>-xxxx` is chosen). Reserving again for the same task returns its entry.

        Raises InvalidArgument, PermissionDenied, AlreadyExists (`BRANCH_TAKEN`, metadata `task`),
        FailedPrecondition (`TASK_ALREADY_RESERVED`: the task holds another repository's branch).
        """
        org_id = parse_organization(parent, "parent")
        require(
            bool(task_id) and len(task_id) <= 64 and "/" not in task_id,
            "task_id",
            "must be a task id",
            domain=DOMAIN,
        )
        repo_org, _ = parse_child(repository, "repositories", "repository")
        require(repo_org == org_id, "repository", "must belong to the parent organization", domain=DOMAIN)
        check_branch(branch)
        require(
            mode in (EXACT, EXISTING, GENERATE), "mode", "must be EXACT, EXISTING or GENERATE", domain=DOMAIN
        )
        await self._membership.require(organization_name(org_id))
        for _ in range(_GENERATE_TRIES if mode == GENERATE else 1):
            candidate = generated_branch(branch) if mode == GENERATE else branch
            try:
                return await self._reserve_once(org_id, task_id, repository, candidate, branch, mode, title)
            except (IntegrityError, _BranchInUse):  # taken, or a concurrent reservation won the slot
                if mode != GENERATE:
                    async with self._db.snapshot() as session:
                        owner = await ix.get_entry_by_branch(
                            session, org_id=org_id, repository=repository, branch=candidate
                        )
                    owner_id = owner.task_id if owner is not None else "?"
                    raise branch_taken(
                        repository, candidate, f"organizations/{org_id}/tasks/{owner_id}"
                    ) from None
        raise branch_taken(repository, branch + "-*", "")

    async def _reserve_once(
        self, org_id: str, task_id: str, repository: str, branch: str, requested: str, mode: int, title: str
    ) -> task_index_pb2.TaskIndexEntry:
        async with self._db.transaction() as session:
            mine = await ix.get_entry(session, org_id=org_id, task_id=task_id)
            if mine is not None:
                same = mine.repository == repository and (
                    mine.branch.startswith(requested + "-") if mode == GENERATE else mine.branch == requested
                )
                if not same:
                    raise precondition(
                        "TASK_ALREADY_RESERVED",
                        f"task {task_id} already holds {mine.branch} of {mine.repository}",
                    )
                if mine.virtual:  # the task service materializes this virtual task under its id
                    await ix.update_entry(
                        session,
                        org_id=org_id,
                        task_id=task_id,
                        virtual=False,
                        title=title or mine.title,
                        update_time=clock.now(),
                    )
                    mine = await ix.get_entry(session, org_id=org_id, task_id=task_id)
                return convert.task_index_entry(mine)
            owner = await ix.get_entry_by_branch(session, org_id=org_id, repository=repository, branch=branch)
            now = clock.now()
            if owner is not None:
                if mode == GENERATE:
                    raise _BranchInUse(branch)
                if mode == EXACT or not owner.virtual:
                    raise branch_taken(repository, branch, f"organizations/{org_id}/tasks/{owner.task_id}")
                await self._hand_over(session, org_id, owner, task_id, title, now)
            else:
                await ix.insert_entry(
                    session,
                    org_id=org_id,
                    task_id=task_id,
                    repository=repository,
                    branch=branch,
                    title=title,
                    virtual=False,
                    pull_request=None,
                    now=now,
                )
            entry = await ix.get_entry(session, org_id=org_id, task_id=task_id)
            return convert.task_index_entry(entry)

    async def _hand_over(
        self, session: Any, org_id: str, owner: Any, task_id: str, title: str, now: dt.datetime
    ) -> None:
        """Give a virtual task's branch (and pull request) to a new real task; drop the virtual summary."""
        await q.delete_task_summary(session, org_id=org_id, task_id=owner.task_id)
        await ix.delete_entry(session, org_id=org_id, task_id=owner.task_id)
        await ix.insert_entry(
            session,
            org_id=org_id,
            task_id=task_id,
            repository=owner.repository,
            branch=owner.branch,
            title=title or owner.title,
            virtual=False,
            pull_request=owner.pull_request,
            now=now,
        )
        changes: list[tuple[str, Any]] = [(f"organizations/{org_id}/tasks/{owner.task_id}", None)]
        repo_change = await recount_repository(session, org_id, owner.repository, "", force=False)
        if repo_change is not None:
            changes.append(repo_change)
        for name, resource in changes:
            await record_change(session, scope=summary_scope(org_id), name=name, resource=resource)

    async def release(self, name: str) -> None:
        """Release a real task's reservation (its creation failed); releasing twice succeeds."""
        org_id, task_id = parse_child(name, "taskIndexEntries")
        await self._membership.require(organization_name(org_id))
        async with self._db.transaction() as session:
            entry = await ix.get_entry(session, org_id=org_id, task_id=task_id)
            if entry is not None and not entry.virtual:
                await ix.delete_entry(session, org_id=org_id, task_id=task_id)

    async def get(self, name: str) -> task_index_pb2.TaskIndexEntry:
        """One entry; raises NotFound."""
        org_id, task_id = parse_child(name, "taskIndexEntries")
        await self._membership.require(organization_name(org_id))
        async with self._db.snapshot() as session:
            entry = await ix.get_entry(session, org_id=org_id, task_id=task_id)
        if entry is None:
            raise _not_found(name)
        return convert.task_index_entry(entry)

    async def list_entries(
        self, *, parent: str, repository: str, branch: str, page_size: int, page_token: str
    ) -> tuple[list[task_index_pb2.TaskIndexEntry], str]:
        """Entries by task id, optionally of one repository (and branch); page_size 0 → 100, max 1000."""
        org_id = parse_organization(parent, "parent")
        if repository:
            parse_child(repository, "repositories", "repository")
        require(not branch or bool(repository), "branch", "requires repository", domain=DOMAIN)
        require(page_size >= 0, "page_size", "must not be negative", domain=DOMAIN)
        await self._membership.require(organization_name(org_id))
        limit = min(page_size or 100, 1000)
        async with self._db.snapshot() as session:
            rows = await ix.list_entries(
                session,
                org_id=org_id,
                repository=repository,
                branch=branch,
                after_task_id=page_token,
                limit=limit + 1,
            )
        entries = [convert.task_index_entry(r) for r in rows[:limit]]
        return entries, rows[limit - 1].task_id if len(rows) > limit else ""
