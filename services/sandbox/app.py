"""Wiring of the sandbox service: `wire(runtime)` builds the provider, stores, agent pool, use cases,
servicer and queue handlers from the host's Runtime.

Work queues: `<prefix>.sandbox.turn` (RunTurn) and `<prefix>.sandbox.git_state` (RefreshGitStateWork),
suffixed with the replica's address when `sandbox.replica_address` is set (api/placement.py: each
sandbox belongs to the replica that created it).
On start, turns left running by a crashed process end INTERRUPTED with a readable notice (their
sessions resume on the next turn, `session/load` where the agent offers it) and sessions with
queued turns are kicked; processes found running are adopted; each replica does this for the
sandboxes it owns. Every 30 s the same check runs again (a turn whose runner stopped heartbeating).
With `sandbox.warm_pool_size` > 0 the warm pool (usecases/warm_pool.py) refills in the background
and drains (stops refilling, cancels preparations) when the host's drain begins.
"""

from __future__ import annotations

import asyncio
import os

import acp
from foundry.sandbox.v1 import sandbox_service_pb2_grpc as pb_grpc

from services.platform.authz import Membership
from services.platform.logging import get_logger
from services.platform.messaging.broker import QueueSpec
from services.platform.server.host import Runtime, Servicer, Wiring
from services.sandbox.api.placement import OwnerGuard
from services.sandbox.api.servicer import SandboxServicer
from services.sandbox.providers import build_provider
from services.sandbox.providers.agents.pool import AgentPool, venv_bin
from services.sandbox.store.logs import LogRecords
from services.sandbox.store.permissions import PermissionRecords
from services.sandbox.store.sandboxes import Queues, SandboxRecords
from services.sandbox.store.warm_pool import WarmPoolRecords
from services.sandbox.usecases.checkout import Checkouts
from services.sandbox.usecases.permissions import Permissions
from services.sandbox.usecases.processes import Processes
from services.sandbox.usecases.sandboxes import Sandboxes
from services.sandbox.usecases.sessions import Sessions
from services.sandbox.usecases.turns import TurnRunner, runner_id
from services.sandbox.usecases.warm_pool import WarmPool
from services.sandbox.workers import refresh_git_state, run_turn

log = get_logger(__name__)
RECOVER_EVERY_SECONDS = 30.0


def wire(rt: Runtime) -> Wiring:
    """Build the sandbox service on `rt` (see the module docstring)."""
    settings = rt.settings
    root = settings.sandbox_root()
    root.mkdir(parents=True, exist_ok=True)
    env = acp.default_environment()
    env["PATH"] = os.pathsep.join([env.get("PATH", ""), venv_bin()])
    provider = build_provider(settings, env)
    replica = settings.sandbox.replica_address
    queues = Queues(settings.name_prefix, replica)
    records = SandboxRecords(rt.db, rt.outbox, queues)
    logs = LogRecords(rt.db, rt.outbox)
    permission_records = PermissionRecords(rt.db, rt.outbox)
    pool = AgentPool(
        provider,
        settings.sandbox.agents,
        append=logs.append_events,
        extra_path=[venv_bin()],
        permissions=permission_records,
    )
    sandboxes = Sandboxes(records, provider, pool, replica=replica)
    sessions = Sessions(
        sandboxes,
        records,
        logs,
        pool,
        configured=settings.sandbox.agents,
        default_agent=settings.sandbox.default_agent,
        models=settings.sandbox.agent_models,
        credentials=settings.sandbox.agent_credentials,
    )
    checkouts = Checkouts(sandboxes, logs)
    processes = Processes(sandboxes, logs)
    sandboxes.before_destroy.append(processes.remove_all)
    warm = WarmPool(
        sandboxes,
        WarmPoolRecords(rt.db, records),
        size=settings.sandbox.warm_pool_size,
        agent=settings.sandbox.default_agent,
        stage_seconds=settings.sandbox.warm_pool_stage_seconds,
        refill_seconds=settings.sandbox.warm_pool_refill_seconds,
    )
    warm.attach()
    runner = TurnRunner(sandboxes, records, logs, pool, runner=runner_id())
    membership = Membership.via_peer(rt.peers)
    servicer = SandboxServicer(
        sandboxes=sandboxes,
        sessions=sessions,
        checkouts=checkouts,
        processes=processes,
        logs=logs,
        hub=rt.hub,
        membership=membership,
        permissions=Permissions(permission_records, pool),
    )

    async def recover() -> None:
        interrupted = await runner.recover()
        await processes.recover()
        log.info("sandbox_recovered", turns_interrupted=interrupted)

    async def recover_periodically() -> None:
        while True:
            await asyncio.sleep(RECOVER_EVERY_SECONDS)
            try:
                await runner.recover()
            except Exception:  # retried at the next interval
                log.warning("sandbox_recover_failed", exc_info=True)

    async def keep_warm() -> None:
        await warm.run()

    async def close() -> None:
        await warm.drain()
        await processes.close()
        await pool.close()
        await provider.close()

    return Wiring(
        membership=membership,
        servicers=[
            Servicer(
                pb_grpc.add_SandboxServiceServicer_to_server, servicer, "foundry.sandbox.v1.SandboxService"
            )
        ],
        queues=[
            (QueueSpec(queues.turn), run_turn.handler(runner)),
            (QueueSpec(queues.git_state), refresh_git_state.handler(checkouts)),
        ],
        on_started=[recover],
        background=[recover_periodically, keep_warm],
        on_close=[close],
        on_drain=[warm.drain],
        interceptors=[OwnerGuard(records, replica)] if replica else [],
    )
