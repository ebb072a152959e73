"""The durable provisioning workflow, driven by `ProvisionTask` messages.

The task row is the state machine (`stage` = last completed stage). A delivery runs the steps one
after the other (each completion claims the next in the same transaction: no queue hop, one
transaction per step); the drain, or a transient failure, hands the next step to the queue. A step:
1. claims the task: under the row lock (SELECT … FOR UPDATE on PostgreSQL; SQLite serializes
   writers) it checks that no other replica holds a live lease, takes the lease and records the
   status (and the "started" stage) of the step;
2. runs one idempotent sandbox command (keyed by task id / session id) with the step timeout,
   renewing the lease meanwhile, so the row lock is never held across a peer call;
3. under the row lock again, if it still holds the lease, records the completed stage (or ERROR
   with a readable message) and either claims the next step or releases the lease and enqueues it
   — all in one transaction with the watch change, the summary event and the audit entries.

A redelivered or duplicated message re-reads the stage and runs what is next (or nothing), so
stages never run twice concurrently and never create a second sandbox or session. A replica that
dies holding a lease is taken over once the lease lapses (`resume_stalled`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from foundry.sandbox.v1 import sandbox_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as sb_pb2
from foundry.task.v1 import events_pb2

from services.platform.errors import FoundryError
from services.platform.logging import get_logger
from services.task.domain import names
from services.task.domain.models import Session, Task, now
from services.task.domain.rules import Step, next_step
from services.task.store import queries
from services.task.usecases import first_turn
from services.task.usecases.changes import Audit, task_changed
from services.task.usecases.deps import Deps
from services.task.usecases.lease import StepFailed, run_leased

log = get_logger(__name__)


Claimed = tuple[Task, Step, Session | None]  # the task as claimed, its step, its first open session


async def run_next_step(
    deps: Deps, name: str, *, last_attempt: bool = True, stopping: Callable[[], bool] = lambda: False
) -> None:
    """Run the unfinished provisioning steps of task `name`, one after the other while this delivery
    holds the task's lease (no-op when provisioning is over or another replica holds the lease).
    Each completed step claims the next in the same transaction, so a step costs one transaction
    and no queue hop; once `stopping()` (the drain began) the next step goes to the queue instead.
    Raises a retryable FoundryError to ask for a delayed retry, unless `last_attempt`, in which case
    the failure is recorded as ERROR."""
    _, task_id = names.task(name)
    claim = f"{deps.replica}:{uuid.uuid4().hex[:12]}"  # one lease per delivery, even within a replica
    claimed = await _claim(deps, task_id, claim)
    if claimed is None:
        return
    reads = OrganizationReads(deps, claimed[0].organization)
    chained = False
    try:
        while claimed is not None:
            task, step, first = claimed
            started = time.monotonic()
            try:
                # A chained step's transient failure is never final and never spends this delivery's
                # retries (they were the first step's): the step gets a work item of its own.
                outcome = await run_leased(
                    deps,
                    task_id,
                    claim,
                    partial(_execute, deps, task, step, first, reads),
                    timeout=deps.step_timeout,
                    doing=partial(step.name.replace, "_", " "),
                    last_attempt=last_attempt and not chained,
                    release_on_retry=not chained,
                )
            except FoundryError as exc:
                if not (chained and exc.retryable):
                    raise
                log.info("provision_step_handed_off", task=task.name, step=step.name, error=exc.message)
                await _hand_off(deps, task_id, claim, task.name)
                return
            finally:
                deps.steps.record(task_id, started, time.monotonic())
            claimed = await _complete(deps, task_id, claim, step, outcome, chain=not stopping())
            chained = True
    finally:
        reads.close()


class OrganizationReads:
    """The organization's settings the steps of one delivery need (egress policy, permission policy,
    model API keys): read once per delivery, all together on first use, so a chain of steps waits
    for one round of peer reads instead of one per step. A failed read fails the step that needs it."""

    def __init__(self, deps: Deps, organization: str) -> None:
        self._deps, self._organization = deps, organization
        self._reads: dict[str, asyncio.Task[Any]] = {}

    def _read(self, what: str) -> Awaitable[Any]:
        if not self._reads:
            for name in ("policies", "keys"):
                self._start(name)
        elif (read := self._reads[what]).done() and (read.cancelled() or read.exception()):
            self._start(what)  # a failed read is asked again by the next step that needs it
        # Shielded: a step cancelled by its timeout must not cancel a read the next step shares.
        return asyncio.shield(self._reads[what])

    def _start(self, what: str) -> None:
        client, org = self._deps.organization, self._organization
        reads = {"policies": client.sandbox_policies, "keys": client.model_credentials}
        read: asyncio.Task[Any] = asyncio.create_task(reads[what](organization=org))
        read.add_done_callback(lambda t: t.cancelled() or t.exception())  # never "never retrieved"
        self._reads[what] = read

    async def egress(self) -> str:
        egress, _ = await self._read("policies")
        return str(egress)

    async def permission_policy(self) -> Any:
        _, policy = await self._read("policies")
        return policy

    async def model_credentials(self) -> dict[str, str]:
        return dict(await self._read("keys"))

    def close(self) -> None:
        for read in self._reads.values():
            read.cancel()


async def _hand_off(deps: Deps, task_id: str, claim: str, name: str) -> None:
    """Give the lease back and enqueue the next step, in one transaction: if it fails, the lease is
    still held and lapses, and the stall sweep enqueues the step (never a task with neither)."""
    async with deps.db.transaction() as session:
        await queries.set_lease(session, task_id=task_id, owner=None, until=None, expected_owner=claim)
        await deps.outbox.enqueue(
            session, queue=deps.queue("provision"), message=events_pb2.ProvisionTask(name=name)
        )


def _begin(task: Task, step: Step, claim: str, at: dt.datetime, lease_seconds: float) -> bool:
    """Take the lease for `step` and show it on the task (status, started stage); True when the task
    visibly changed."""
    task.lease_owner = claim
    task.lease_until = at + dt.timedelta(seconds=lease_seconds)
    changed = task.status != step.status
    task.status = step.status
    if step.started_stage and task.stage != step.started_stage:
        task.stage, task.stage_updated_at, changed = step.started_stage, at, True
    return changed


async def _claim(deps: Deps, task_id: str, claim: str) -> Claimed | None:
    async with deps.db.transaction() as session:
        task = await queries.get_task(session, task_id=task_id, lock=True)
        if task is None or not task.provisioning or task.stage in ("ready", "error"):
            return None
        step = next_step(task.stage)
        if step is None:
            return None
        at = now()
        if task.lease_owner and task.lease_until and task.lease_until > at:
            log.info("provision_step_busy", task=task.name, holder=task.lease_owner)
            return None
        sessions = await queries.list_sessions(session, task_id=task_id)
        previous = task.status
        if _begin(task, step, claim, at, deps.lease_seconds):
            await task_changed(
                session,
                deps,
                task,
                sessions=sessions,
                previous_status=previous,
                audits=[Audit("task.provision.step", step=step.name, stage=task.stage)],
            )
        else:
            await queries.set_lease(session, task_id=task_id, owner=task.lease_owner, until=task.lease_until)
        first = next((s for s in sessions if not s.closed), None)
    log.info("provision_step_claimed", task=task.name, step=step.name)
    return task, step, first


async def _execute(
    deps: Deps, task: Task, step: Step, first: Session | None, reads: OrganizationReads
) -> dict[str, object]:
    """Run the step's sandbox command; returns what to record on the task."""
    sb = deps.sandbox
    timeout = deps.step_timeout
    if step.name == "create_sandbox":
        # The organization's egress policy is read here, in the background step, not on CreateTask.
        egress = await reads.egress()
        created = await sb.create_sandbox(
            sb_pb2.CreateSandboxRequest(
                parent=task.parent,
                sandbox_id=task.id,
                sandbox=sandbox_pb2.Sandbox(task=task.name, repository=task.repository),
                request_id=uuid.uuid4().hex,
                egress_policy=egress,
            ),
            deadline=timeout,
        )
        return {"sandbox": created.sandbox}
    if step.name == "prepare_repository":
        owner = task.owner
        token = ""
        if task.clone_url.startswith(("https://", "http://")):
            # Minted per attempt (about an hour long); handed to git in the sandbox, never stored.
            token = await deps.github_data.access_token(task.repository, deadline=timeout)
        prepared = await sb.prepare_repository(
            sb_pb2.PrepareRepositoryRequest(
                name=task.sandbox_name,
                clone_url=task.clone_url,
                access_token=token,
                branch=task.branch,
                base_branch=task.default_branch,
                git_user_name=owner.login if owner else "",
                git_user_email=owner.email if owner else "",
            ),
            deadline=timeout,
        )
        return {"sandbox": prepared.sandbox}
    if step.name == "start_agent":
        # The organization's model API keys, read here in the background, for the agent's environment.
        environment = await reads.model_credentials()
        await sb.start_agent(
            sb_pb2.StartAgentRequest(
                parent=task.sandbox_name,
                agent=f"agents/{task.agent}" if task.agent else "",
                environment=environment,
            ),
            deadline=timeout,
        )
        return {}
    if first is None:  # every session was closed meanwhile: nothing to create
        return {}
    # The organization's permission policy, read here in the background like the egress policy.
    policy = await reads.permission_policy()
    environment = await reads.model_credentials()
    started = await sb.start_agent_session(
        sb_pb2.StartAgentSessionRequest(
            parent=task.sandbox_name,
            session_id=first.id,
            agent=f"agents/{first.agent}" if first.agent else "",
            model=first.model,
            permission_policy=policy,
            environment=environment,
        ),
        deadline=timeout,
    )
    return {"session_id": first.id, "sandbox_session": started.agent_session.name}


async def _complete(
    deps: Deps, task_id: str, claim: str, step: Step, outcome: object, *, chain: bool
) -> Claimed | None:
    """Record the step's outcome under the row lock. With `chain`, a success also claims the next
    step (same lease) in this transaction and returns it to run; otherwise it enqueues it."""
    nxt: Step | None = None
    async with deps.db.transaction() as session:
        task = await queries.get_task(session, task_id=task_id, lock=True)
        if task is None:
            return None
        if task.lease_owner != claim:
            log.warning("provision_lease_lost", task=task.name, step=step.name)
            return None  # another replica took over; it re-runs this idempotent step
        task.lease_owner, task.lease_until = None, None
        if not task.provisioning:  # killed or archived meanwhile
            await queries.update_task(session, task=task)
            return None
        sessions = await queries.list_sessions(session, task_id=task_id)
        at = now()
        previous = task.status
        changed: list[Session] = []
        if isinstance(outcome, StepFailed):
            task.failed_stage, task.stage, task.stage_error = step.done_stage, "error", outcome.message
            task.status, task.status_message, task.stage_updated_at = "error", outcome.message, at
            for s in sessions:
                if not s.closed and s.status.startswith("pending"):
                    s.status, s.error_message, s.updated_at = "error", outcome.message, at
                    await queries.update_session(session, row=s)
                    changed.append(s)
            await task_changed(
                session,
                deps,
                task,
                sessions=sessions,
                changed_sessions=changed,
                previous_status=previous,
                audits=[Audit("task.error", stage=step.done_stage, message=outcome.message)],
            )
            log.warning("provision_failed", task=task.name, step=step.name, error=outcome.message)
            return None
        assert isinstance(outcome, dict)
        sandbox = outcome.get("sandbox")
        if isinstance(sandbox, sandbox_pb2.Sandbox):
            task.sandbox_state, task.sandbox_provider = sandbox.state, sandbox.provider
            task.sandbox_cwd, task.sandbox_error = sandbox.checkout.path, sandbox.error_message
        task.stage, task.stage_updated_at = step.done_stage, at
        audits = [Audit("task.provision.stage", stage=step.done_stage)]
        ensure: list[Session] = []
        for s in sessions:
            if s.closed:
                continue
            if s.id == outcome.get("session_id"):
                s.status, s.sandbox_session, s.error_message = "ready", str(outcome["sandbox_session"]), ""
                await first_turn.release_held(session, deps, s, at=at)
            elif step.done_stage == "sandbox_allocated" and s.status == "pending_provision":
                s.status = "pending_session_create"
            elif step.done_stage == "ready" and s.status.startswith("pending"):
                s.status = "pending_session_create"
                ensure.append(s)
            else:
                continue
            s.updated_at = at
            await queries.update_session(session, row=s)
            changed.append(s)
        if step.done_stage == "ready":
            task.status = "init_complete"  # task_changed moves it on to idle/running at once
            audits.append(Audit("task.initialized"))
        elif chain and (nxt := next_step(task.stage)) is not None:
            _begin(task, nxt, claim, at, deps.lease_seconds)
            audits.append(Audit("task.provision.step", step=nxt.name, stage=task.stage))
        await task_changed(
            session,
            deps,
            task,
            sessions=sessions,
            changed_sessions=changed,
            previous_status=previous,
            audits=audits,
        )
        if step.done_stage != "ready" and nxt is None:
            await deps.outbox.enqueue(
                session, queue=deps.queue("provision"), message=events_pb2.ProvisionTask(name=task.name)
            )
        for s in ensure:
            await deps.outbox.enqueue(
                session, queue=deps.queue("ensure_session"), message=events_pb2.EnsureSession(name=s.name)
            )
        first = next((s for s in sessions if not s.closed), None)
    log.info("provision_stage_done", task=task.name, stage=step.done_stage, chained=nxt is not None)
    return (task, nxt, first) if nxt is not None else None


async def resume_all(deps: Deps, *, only_stalled: bool = False) -> int:
    """Enqueue the next step of every task whose provisioning is unfinished and not leased by a live
    replica (all of them at start-up; with `only_stalled`, only those whose lease lapsed).
    Returns how many were enqueued."""
    at = now()
    async with deps.db.transaction() as session:
        rows = await queries.unfinished_provisioning(
            session, lease_expired_before=at, only_stalled=only_stalled
        )
        for task in rows:
            if task.lease_owner is not None:
                await queries.set_lease(
                    session, task_id=task.id, owner=None, until=None, expected_owner=task.lease_owner
                )
            await deps.outbox.enqueue(
                session, queue=deps.queue("provision"), message=events_pb2.ProvisionTask(name=task.name)
            )
    if rows:
        log.info("provision_resumed", tasks=len(rows), stalled_only=only_stalled)
    return len(rows)
