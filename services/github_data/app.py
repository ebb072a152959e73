"""Wiring of the github_data service: `wire(rt)` builds the flows and hands the host its servicer,
its two work queues and the start-up hook that resumes interrupted syncs."""

from __future__ import annotations

from foundry.github_data.v1 import github_data_service_pb2_grpc as pb_grpc

from services.github_data.api.servicer import GithubDataServicer
from services.github_data.clients import OrganizationTokens
from services.github_data.providers import RetryPolicy
from services.github_data.usecases.connections import resume_jobs
from services.github_data.usecases.deps import Deps
from services.github_data.usecases.events import Events
from services.github_data.workers import run_sync, webhook
from services.platform.authz import Membership
from services.platform.messaging import QueueSpec
from services.platform.server.host import Runtime, Servicer, Wiring

SERVICE_FULL_NAME = "foundry.github_data.v1.GithubDataService"


def build_deps(rt: Runtime, *, retry: RetryPolicy | None = None) -> Deps:
    """The flows' dependencies from the runtime."""
    events = Events(rt.outbox, rt.settings.name_prefix)
    return Deps(
        db=rt.db, events=events, github=rt.settings.github, tokens=OrganizationTokens(rt.peers), retry=retry
    )


def wire(rt: Runtime) -> Wiring:
    deps = build_deps(rt)
    membership = Membership.via_peer(rt.peers)

    async def resume() -> None:
        await resume_jobs(deps)

    # One sync at a time per process is plenty (each sync fans out 10 requests per batch); syncs of
    # several organizations still run on several replicas. Webhooks are small and many.
    sync_spec = QueueSpec(name=deps.events.sync_queue, prefetch=2)
    webhook_spec = QueueSpec(name=deps.events.webhook_queue)
    return Wiring(
        membership=membership,
        servicers=[
            Servicer(
                pb_grpc.add_GithubDataServiceServicer_to_server,
                GithubDataServicer(deps, membership),
                SERVICE_FULL_NAME,
            )
        ],
        queues=[(sync_spec, run_sync.handler(deps)), (webhook_spec, webhook.handler(deps))],
        on_started=[resume],
    )
