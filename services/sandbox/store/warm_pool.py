"""The warm pool's rows: pool registrations (`warm_pools`) and warm sandboxes (sandbox rows with
`pool` set and no task). Only the sandbox service writes them.

A claim is one conditional UPDATE of a warm row (`pool = 'warm'` in its WHERE): it renames the row
to the task's sandbox id and sets its task, so exactly one claimer wins a row even with several task
replicas racing (PostgreSQL re-checks the WHERE on the row a concurrent claim changed; SQLite
serializes writers), and a second claim for the same task fails on the primary key instead of
taking a second row.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from services.platform import clock
from services.platform.db import Database
from services.platform.db.upsert import insert
from services.sandbox.domain import models as m
from services.sandbox.store import rows
from services.sandbox.store.queries import sandbox_where
from services.sandbox.store.sandboxes import SandboxRecords
from services.sandbox.store.tables import sandboxes, warm_pools

PREPARING, WARM, CLAIMED, DISCARDED = "preparing", "warm", "claimed", "discarded"
UNCLAIMED = (PREPARING, WARM)


@dataclass(frozen=True)
class PoolTarget:
    """What one repository's warm sandboxes are prepared from."""

    organization: str
    repository: str
    replica: str
    clone_url: str
    base_branch: str
    egress: str
    agent: str


class WarmPoolRecords:
    """Reads and writes of pool registrations and warm sandbox rows."""

    def __init__(self, db: Database, records: SandboxRecords) -> None:
        self.db = db
        self.records = records

    async def register(self, target: PoolTarget) -> None:
        """Create or update the repository's pool registration (this replica's)."""
        t = clock.now()
        values = {
            "clone_url": target.clone_url,
            "base_branch": target.base_branch,
            "egress_policy": target.egress,
            "agent": target.agent,
            "update_time": t,
        }
        async with self.db.transaction() as s:
            await s.execute(
                insert(s, warm_pools)
                .values(
                    organization=target.organization,
                    repository=target.repository,
                    replica=target.replica,
                    create_time=t,
                    **values,
                )
                .on_conflict_do_update(
                    index_elements=[warm_pools.c.organization, warm_pools.c.repository, warm_pools.c.replica],
                    set_=values,
                )
            )

    async def set_egress(self, organization: str, repository: str, replica: str, egress: str) -> None:
        async with self.db.transaction() as s:
            await s.execute(
                update(warm_pools)
                .where(
                    warm_pools.c.organization == organization,
                    warm_pools.c.repository == repository,
                    warm_pools.c.replica == replica,
                )
                .values(egress_policy=egress, update_time=clock.now())
            )

    async def targets(self, replica: str) -> list[PoolTarget]:
        async with self.db.snapshot() as s:
            result = await s.execute(select(warm_pools).where(warm_pools.c.replica == replica))
            return [
                PoolTarget(
                    r.organization,
                    r.repository,
                    r.replica,
                    r.clone_url,
                    r.base_branch,
                    r.egress_policy,
                    r.agent,
                )
                for r in result.all()
            ]

    async def unclaimed(
        self, replica: str, organization: str | None = None, repository: str | None = None
    ) -> list[m.Sandbox]:
        """Warm and preparing sandboxes of `replica` (of one repository when given), oldest first."""
        query = select(sandboxes).where(
            sandboxes.c.pool.in_(UNCLAIMED),
            sandboxes.c.replica == replica,
            sandboxes.c.state.not_in([m.SandboxState.DESTROYED.value, m.SandboxState.DESTROYING.value]),
        )
        if organization is not None:
            query = query.where(sandboxes.c.organization == organization)
        if repository is not None:
            query = query.where(sandboxes.c.repository == repository)
        async with self.db.snapshot() as s:
            result = await s.execute(query.order_by(sandboxes.c.create_time, sandboxes.c.sandbox_id))
            return [rows.sandbox(r) for r in result.all()]

    async def mark(self, key: m.SandboxKey, *, expected: str, pool: str) -> bool:
        """Move an unclaimed row from pool state `expected` to `pool`; False when it is not in
        `expected` any more (claimed or discarded meanwhile)."""
        async with self.db.transaction() as s:
            result = await s.execute(
                update(sandboxes)
                .where(sandbox_where(key), sandboxes.c.pool == expected, sandboxes.c.task == "")
                .values(pool=pool, update_time=clock.now(), version=sandboxes.c.version + 1)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    async def claim(
        self, warm: m.SandboxKey, key: m.SandboxKey, *, task: str, repository: str, egress: str, replica: str
    ) -> m.Sandbox | None:
        """Take the warm sandbox `warm` for the task sandbox `key`: one conditional UPDATE that renames
        it, sets its task and marks it claimed, only while it is still warm, of the same organization,
        repository, egress policy and replica. Returns the claimed row (published as SandboxChanged),
        or None when another claimer won it or a row named `key` exists already (the same task's
        other claim: the caller reads that one)."""
        try:
            async with self.db.transaction() as s:
                result = await s.execute(
                    update(sandboxes)
                    .where(
                        sandbox_where(warm),
                        sandboxes.c.organization == key.organization,
                        sandboxes.c.repository == repository,
                        sandboxes.c.egress_policy == egress,
                        sandboxes.c.replica == replica,
                        sandboxes.c.pool == WARM,
                        sandboxes.c.task == "",
                        sandboxes.c.state == m.SandboxState.RUNNING.value,
                    )
                    .values(
                        sandbox_id=key.sandbox_id,
                        task=task,
                        pool=CLAIMED,
                        update_time=clock.now(),
                        version=sandboxes.c.version + 1,
                    )
                )
                if not result.rowcount:  # type: ignore[attr-defined]
                    return None
                row = (await s.execute(select(sandboxes).where(sandbox_where(key)))).one()
                claimed = rows.sandbox(row)
                await self.records.publish_sandbox(s, claimed)
                return claimed
        except IntegrityError:
            return None
