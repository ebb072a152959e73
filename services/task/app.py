"""Wiring of the task service: `wire(runtime) -> Wiring` (servicer, queues, resume hooks)."""

from __future__ import annotations

import asyncio
import datetime as dt

from foundry.task.v1 import task_service_pb2, task_service_pb2_grpc

from services.platform.authz import Membership
from services.platform.logging import get_logger
from services.platform.messaging.broker import QueueSpec
from services.platform.server.host import Runtime, Servicer, Wiring
from services.task.api.servicer import TaskServicer
from services.task.clients import GithubDataClient, OrganizationClient, SandboxClient
from services.task.usecases import commands, lease, provisioning, publish, session_commands, sessions
from services.task.usecases.deps import Deps
from services.task.workers import handlers

log = get_logger(__name__)
STALL_SWEEP_SECONDS = 2.0  # one indexed query per replica; with the 6 s lease, takeover within ~8 s
# A turn whose end was not heard of for this long is asked after (one idempotent PromptSession): a
# lost delivery or `turn_completed` (a broker restart's edge cases) costs at most ~40 s, never a
# session stuck RUNNING.
TURN_RESEND_AFTER = dt.timedelta(seconds=30)
TURN_SWEEP_SECONDS = 10.0


def build_deps(rt: Runtime) -> Deps:
    return Deps(
        settings=rt.settings,
        db=rt.db,
        outbox=rt.outbox,
        organization=OrganizationClient(rt.peers),
        github_data=GithubDataClient(rt.peers),
        sandbox=SandboxClient(rt.peers),
        membership=Membership.via_peer(rt.peers),
    )


def wire(rt: Runtime) -> Wiring:
    deps = build_deps(rt)
    q = deps.queue
    # Provisioning steps wait on the sandbox for up to step_timeout: a small prefetch keeps the other
    # replicas busy instead of piling messages onto one.
    queues = [
        (QueueSpec(q("provision"), prefetch=8), handlers.provision(deps)),
        (QueueSpec(q("ensure_session"), prefetch=8), handlers.ensure_session(deps)),
        (QueueSpec(q("deliver_message")), handlers.deliver_message(deps)),
        (QueueSpec(q("session_command")), handlers.session_command(deps)),
        (QueueSpec(q("revert_file")), handlers.revert_file(deps)),
        (QueueSpec(q("command"), prefetch=8), handlers.command(deps)),
        # github_data asks for the archive when the task's pull request is closed or merged.
        (
            QueueSpec(q("archive_on_branch"), bindings=("github_data.task.archive_on_branch",)),
            handlers.archive_on_branch(deps),
        ),
        (QueueSpec(q("sandbox_events"), bindings=handlers.SANDBOX_KEYS), handlers.sandbox(deps)),
        (QueueSpec(q("pull_requests"), bindings=handlers.GITHUB_KEYS), handlers.github(deps)),
    ]

    async def resume() -> None:
        """Crash resume: continue provisioning and archive/kill flows left mid-way."""
        resumed = await provisioning.resume_all(deps)
        flows = await commands.resume(deps)
        publications = await publish.resume(deps)
        session_work = await session_commands.resume(deps, stale=dt.timedelta(0))
        log.info(
            "task_work_resumed",
            provisioning=resumed,
            commands=flows,
            publications=publications,
            session_commands=session_work,
        )

    async def sweep_stalled() -> None:
        """Take over provisioning and publications whose replica died holding the lease (after
        the lease lapses); enqueue again session commands left pending."""
        while True:
            await asyncio.sleep(STALL_SWEEP_SECONDS)
            try:
                if await lease.any_stalled(deps):
                    await provisioning.resume_all(deps, only_stalled=True)
                    await publish.resume(deps, only_stalled=True)
                if await session_commands.any_pending(deps):
                    await session_commands.resume(deps)
            except Exception:  # retried at the next sweep
                log.warning("stall_sweep_failed", exc_info=True)

    async def resend_stale_turns() -> None:
        """Ask again after turns not heard of for TURN_RESEND_AFTER (`sessions.resend_stale`)."""
        while True:
            await asyncio.sleep(TURN_SWEEP_SECONDS)
            try:
                await sessions.resend_stale(deps, older_than=TURN_RESEND_AFTER)
            except Exception:  # retried at the next sweep
                log.warning("turn_sweep_failed", exc_info=True)

    async def listen_repositories() -> None:
        await deps.repositories.listen(rt.broker)

    servicer = TaskServicer(deps, rt.hub)
    return Wiring(
        membership=deps.membership,
        servicers=[
            Servicer(
                task_service_pb2_grpc.add_TaskServiceServicer_to_server,
                servicer,
                task_service_pb2.DESCRIPTOR.services_by_name["TaskService"].full_name,
            )
        ],
        queues=queues,
        on_started=[listen_repositories, resume],
        background=[sweep_stalled, resend_stale_turns],
        on_close=[deps.repositories.stop_listening],
    )
