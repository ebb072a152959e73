"""Wiring of the github_data service: `wire(rt)` builds the flows and hands the host its servicer,
its three work queues (sync, webhook, user account discovery), the start-up hook that resumes
interrupted syncs and the sweep that takes over syncs whose runner died (lease lapsed)."""

from __future__ import annotations

import asyncio

from foundry.github_data.v1 import github_data_service_pb2_grpc as pb_grpc

from services.github_data.api.servicer import GithubDataServicer
from services.github_data.providers import RetryPolicy
from services.github_data.usecases.connections import resume_jobs
from services.github_data.usecases.deps import Deps
from services.github_data.usecases.events import Events
from services.github_data.usecases.user_accounts import StoredTokens
from services.github_data.workers import discover_accounts, run_sync, webhook
from services.platform.authz import Membership
from services.platform.logging import get_logger
from services.platform.messaging import QueueSpec
from services.platform.secrets import SecretBox
from services.platform.server.host import Runtime, Servicer, Wiring

SERVICE_FULL_NAME = "foundry.github_data.v1.GithubDataService"
# One indexed query per replica; with the 6 s sync lease (SYNC_LEASE_SECONDS), takeover within ~8 s.
STALL_SWEEP_SECONDS = 2.0
log = get_logger(__name__)


def build_deps(rt: Runtime, *, retry: RetryPolicy | None = None) -> Deps:
    """The flows' dependencies from the runtime."""
    events = Events(rt.outbox, rt.settings.name_prefix)
    box = SecretBox(rt.settings.credentials_key.get_secret_value())
    return Deps(
        db=rt.db,
        events=events,
        github=rt.settings.github,
        tokens=StoredTokens(rt.db, box),
        box=box,
        retry=retry,
    )


def wire(rt: Runtime) -> Wiring:
    """Raises ValueError in production without a real `credentials_key` (it seals users' tokens)."""
    rt.settings.require_credentials_key()
    deps = build_deps(rt)
    membership = Membership.via_peer(rt.peers)

    async def resume() -> None:
        await resume_jobs(deps)

    async def sweep_stalled() -> None:
        """Re-enqueue syncs whose runner died holding the lease (once it lapsed)."""
        while True:
            await asyncio.sleep(STALL_SWEEP_SECONDS)
            try:
                await resume_jobs(deps, only_stalled=True)
            except Exception:  # retried at the next sweep
                log.warning("sync_sweep_failed", exc_info=True)

    # One sync at a time per process is plenty (each sync fans out 10 requests per batch); syncs of
    # several organizations still run on several replicas. Webhooks are small and many.
    sync_spec = QueueSpec(name=deps.events.sync_queue, prefetch=2)
    webhook_spec = QueueSpec(name=deps.events.webhook_queue)
    # Account discovery reads GitHub off every request path; the last attempt records a failure.
    discovery_spec = QueueSpec(name=deps.events.discovery_queue, prefetch=4)
    discovery_attempts = discovery_spec.max_attempts or rt.settings.messaging.max_attempts
    return Wiring(
        membership=membership,
        servicers=[
            Servicer(
                pb_grpc.add_GithubDataServiceServicer_to_server,
                GithubDataServicer(deps, membership),
                SERVICE_FULL_NAME,
            )
        ],
        queues=[
            (sync_spec, run_sync.handler(deps)),
            (webhook_spec, webhook.handler(deps)),
            (discovery_spec, discover_accounts.handler(deps, max_attempts=discovery_attempts)),
        ],
        on_started=[resume],
        background=[sweep_stalled],
    )
