"""The warm pool: per repository, sandboxes prepared ahead of any task, claimed by new tasks.

A repository gets a pool once a task's sandbox of it was prepared on this replica (and its clone URL
needs no token: a local path or file:// URL; an https repository's token is minted per task by
github_data, which the sandbox service cannot ask for). Its warm sandboxes (`settings.sandbox.
warm_pool_size` of them) are sandbox rows with no task, `pool` = `preparing` then `warm`: created
with the organization's egress policy as of the registration, the repository cloned and checked out
detached at the default branch's head, the default agent started (`initialize`) with no model API
keys. Each stage has a deadline (`warm_pool_stage_seconds`); a failed preparation is discarded.

`claim` (CreateSandbox of a task, before a sandbox is created for it) takes the oldest warm one of
the same organization, repository, egress policy and replica in one conditional update
(store/warm_pool.py) and renames it to the task's sandbox; warm ones whose egress policy is not the
organization's current one are discarded (destroyed) and the pool follows the new policy.
PrepareRepository then switches the claimed checkout to the task's branch (fetching first unless the
remote's head is still the one checked out); StartAgent starts the agent again when the organization
gives model API keys (the warm one has none); StartAgentSession opens the session on it. A claimed
sandbox is the task's like any other and is never returned to the pool.

Refill runs in the background (`run`): at start, then whenever a claim or registration wakes it,
else every `warm_pool_refill_seconds`, but never within REFILL_AFTER_CLAIM_SECONDS of a claim (the
claiming task's steps first). The rows are the state, so a restart loses nothing: at start
this replica's unclaimed sandboxes of an earlier process (their agents ended with it) are destroyed
and the pools refilled. `drain` (SIGTERM) stops refilling and cancels the preparations in flight;
the warm sandboxes are left as they are and reclaimed (destroyed) by the next start.
"""

from __future__ import annotations

import asyncio
import uuid

from services.platform.aio import cancel_and_log, wait_event
from services.platform.clock import now
from services.platform.logging import get_logger
from services.sandbox.domain.models import Sandbox, SandboxKey, SandboxState
from services.sandbox.store.warm_pool import (
    DISCARDED,
    PREPARING,
    UNCLAIMED,
    WARM,
    PoolTarget,
    WarmPoolRecords,
)
from services.sandbox.usecases.sandboxes import Sandboxes

log = get_logger(__name__)
# No refill starts until this long after a claim (neither the claim's wake nor a periodic pass):
# the claiming task's next steps (switch, session) run first instead of competing with a clone and
# an agent start for the CPU.
REFILL_AFTER_CLAIM_SECONDS = 1.0


class WarmPool:
    """The warm pools of this replica.

    Args:
        sandboxes: creates, prepares and destroys the warm sandboxes.
        records: pool registrations and warm rows.
        size: warm sandboxes kept per repository (0: no pools, no claims).
        agent: the agent started in warm sandboxes.
        stage_seconds: deadline of each preparation stage (create, checkout, agent start).
        refill_seconds: the longest time between two refill passes.
    """

    def __init__(
        self,
        sandboxes: Sandboxes,
        records: WarmPoolRecords,
        *,
        size: int,
        agent: str,
        stage_seconds: float = 60.0,
        refill_seconds: float = 5.0,
    ) -> None:
        self.sandboxes = sandboxes
        self.records = records
        self.size = size
        self.agent = agent
        self.stage_seconds = stage_seconds
        self.refill_seconds = refill_seconds
        self.replica = sandboxes.replica
        self.draining = False
        self.wake = asyncio.Event()
        self._preparing: set[asyncio.Task[None]] = set()
        self._held_until = 0.0  # loop time before which no refill starts (REFILL_AFTER_CLAIM_SECONDS)
        self._registered: dict[tuple[str, str], PoolTarget] = {}

    def attach(self) -> None:
        """Have CreateSandbox claim from the pool and PrepareRepository register repositories."""
        if self.size > 0:
            self.sandboxes.claim_warm = self.claim
            self.sandboxes.prepared = self.register

    # -- claims --------------------------------------------------------------------------------

    async def claim(self, key: SandboxKey, task: str, repository: str, egress: str) -> Sandbox | None:
        """A warm sandbox of `repository` in `key`'s organization with the egress policy `egress`,
        renamed to `key` and given to `task`; None when there is none (the caller creates one)."""
        if self.draining:
            return None
        candidates = await self.records.unclaimed(self.replica, key.organization, repository)
        stale = [w for w in candidates if w.egress != egress]
        claimed: Sandbox | None = None
        for warm in candidates:
            if warm.pool != WARM or warm.egress != egress:
                continue
            claimed = await self.records.claim(
                warm.key, key, task=task, repository=repository, egress=egress, replica=self.replica
            )
            if claimed is not None:
                self.sandboxes.agents.rename(warm.key, key)
                log.info("warm_sandbox_claimed", sandbox=key.name, warm=warm.key.sandbox_id)
                break
        if stale:
            # The organization's egress policy changed since they were made: never handed out.
            await self.records.set_egress(key.organization, repository, self.replica, egress)
            self._registered.pop((key.organization, repository), None)
            for warm in stale:
                await self.discard(warm, expected=warm.pool, reason="egress policy changed")
        if claimed is not None or stale:
            at = asyncio.get_running_loop().time()
            if at >= self._held_until:  # not extended by later claims: steady claims still refill
                self._held_until = at + REFILL_AFTER_CLAIM_SECONDS
            self.wake.set()  # `run` waits out the hold, then refills
        return claimed

    async def register(self, sandbox: Sandbox) -> None:
        """Give the repository of a task's freshly prepared sandbox a pool (its clone URL, default
        branch and egress policy); nothing for a URL that needs a token."""
        checkout = sandbox.checkout
        if self.draining or checkout is None or checkout.clone_url.startswith(("https://", "http://")):
            return
        target = PoolTarget(
            organization=sandbox.key.organization,
            repository=sandbox.repository,
            replica=self.replica,
            clone_url=checkout.clone_url,
            base_branch=checkout.base_branch,
            egress=sandbox.egress,
            agent=self.agent,
        )
        if self._registered.get((target.organization, target.repository)) == target:
            return
        await self.records.register(target)
        self._registered[(target.organization, target.repository)] = target
        self.wake.set()

    # -- refill --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Background job: reclaim what an earlier process left, then keep the pools full."""
        if self.size <= 0:
            return
        await self.reclaim()
        loop = asyncio.get_running_loop()
        while not self.draining:
            held = self._held_until - loop.time()
            if held > 0:  # a task just claimed a warm sandbox: its next steps go first
                await asyncio.sleep(held)
                continue
            self.wake.clear()
            try:
                await self.refill()
            except Exception:  # retried at the next pass
                log.warning("warm_pool_refill_failed", exc_info=True)
            await wait_event(self.wake, self.refill_seconds)

    async def reclaim(self) -> int:
        """Destroy this replica's unclaimed sandboxes (an earlier process's: their agents are gone)."""
        left = await self.records.unclaimed(self.replica)
        for warm in left:
            await self.discard(warm, expected=warm.pool, reason="left by an earlier process")
        if left:
            log.info("warm_pool_reclaimed", sandboxes=len(left))
        return len(left)

    async def refill(self) -> int:
        """Start preparing the warm sandboxes each pool lacks; returns how many were started."""
        started = 0
        for target in await self.records.targets(self.replica):
            have = await self.records.unclaimed(self.replica, target.organization, target.repository)
            for _ in range(self.size - len(have)):
                if self.draining:
                    return started
                key = SandboxKey(target.organization, f"warm-{uuid.uuid4().hex[:20]}")
                t = now()
                await self.sandboxes.records.insert_sandbox(
                    Sandbox(
                        key=key,
                        task="",
                        repository=target.repository,
                        provider=self.sandboxes.provider.name,
                        provider_sandbox_id="",
                        state=SandboxState.PENDING,
                        checkout=None,
                        error_message="",
                        create_time=t,
                        update_time=t,
                        destroy_time=None,
                        version=1,
                        replica=self.replica,
                        pool=PREPARING,
                        egress=target.egress,
                    )
                )
                if self.draining:  # began during the insert: the row is left for the next start to reclaim
                    return started
                job = asyncio.create_task(self._prepare(key, target), name=f"warm-{key.sandbox_id}")
                self._preparing.add(job)
                job.add_done_callback(self._preparing.discard)
                started += 1
        return started

    async def _prepare(self, key: SandboxKey, target: PoolTarget) -> None:
        """Create, check out and start the agent of one warm sandbox, each stage under its deadline;
        discard it when a stage fails. Cancelled (drain): left PREPARING for the next start."""
        sandboxes = self.sandboxes
        try:
            async with asyncio.timeout(self.stage_seconds):
                provider_id = await sandboxes.provider.create(key, egress=target.egress)
            await sandboxes.records.update_sandbox(
                key, state=SandboxState.RUNNING, provider_sandbox_id=provider_id
            )
            async with asyncio.timeout(self.stage_seconds):
                sandbox = await sandboxes.prepare(
                    key,
                    clone_url=target.clone_url,
                    branch=target.base_branch,
                    base_branch="",
                    token="",
                    user_name="",
                    user_email="",
                    detach=True,
                )
            async with asyncio.timeout(self.stage_seconds):
                await sandboxes.agents.ensure(sandbox, target.agent)
            if not await self.records.mark(key, expected=PREPARING, pool=WARM):
                raise RuntimeError("no longer preparing")
            log.info("warm_sandbox_ready", sandbox=key.name, repository=target.repository)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("warm_sandbox_failed", sandbox=key.name, error=str(exc) or type(exc).__name__)
            current = await sandboxes.records.get_sandbox(key)
            if current is not None:
                await self.discard(current, expected=PREPARING, reason=f"preparation failed: {exc}")

    async def discard(self, warm: Sandbox, *, expected: str, reason: str) -> bool:
        """Destroy an unclaimed sandbox (only while it is still in pool state `expected`)."""
        if expected not in UNCLAIMED or not await self.records.mark(
            warm.key, expected=expected, pool=DISCARDED
        ):
            return False
        try:
            await self.sandboxes.destroy(warm.key, reason=f"warm pool: {reason}")
        except Exception:
            log.warning("warm_sandbox_destroy_failed", sandbox=warm.key.name, exc_info=True)
        return True

    async def drain(self) -> None:
        """SIGTERM: stop refilling and claiming, cancel the preparations in flight (their rows are
        reclaimed by the next start, as are the warm sandboxes left)."""
        self.draining = True
        self.wake.set()
        jobs = list(self._preparing)
        await cancel_and_log(jobs, log, "warm_pool_jobs_ignored_cancel")  # bounded: must not hang the drain
        if jobs:
            log.info("warm_pool_drained", cancelled=len(jobs))

    def in_flight(self) -> int:
        return len(self._preparing)
