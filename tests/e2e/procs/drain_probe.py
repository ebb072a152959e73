"""`python -m tests.e2e.procs.drain_probe`: the real organization service (its own wiring, on the
platform `ServiceHost` and `Process`) plus an instrumented probe the drain tests drive.

Probe pieces, registered through the same `Wiring` as the service's own:
- gRPC `e2e.DrainProbe/Slow` (raw bytes): request JSON `{"id": str, "seconds": float}`; waits for
  the drain to begin, runs `seconds` more (so whether it ends inside the grace does not depend on the
  machine's speed), then runs a database transaction and answers `{"id": ...}`. If cancelled (grace
  over), its cleanup takes CLEANUP_SECONDS and ends with one transaction, the way real handlers hand
  a lease back.
- queue `<prefix>.organization.e2e_probe`: body JSON `{"id", "seconds", "wait_for_drain"?}`; waits the
  same way (unless `wait_for_drain` is false: then it runs `seconds` at once), then writes its inbox
  row in `ctx.transaction()`; also cleans up through the database when cancelled. At most
  PROBE_CONCURRENCY handlers run at once (prefetch is larger), so a further delivery arrives in the
  process and waits for a slot: the drain must give it back to the queue unstarted.

Instrumentation (one JSON line each on stdout, next to the service's own logs):
- `probe_started` / `probe_ended {id, kind, outcome, cleanup, db_errors}`: `outcome` is finished or
  cancelled, `cleanup` is done or interrupted (cancelled again mid-cleanup), `db_errors` lists every
  database call of that handler that failed because the engine was closed.
- `probe_db_dispose {active_probes, active_rpcs, active_handlers}`: what was still running when
  the host disposed the engine (must be nothing).
- `probe_checkout_after_dispose`: a pooled connection was checked out after disposal began.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import grpc
from sqlalchemy import event, text

from services.organization.app import wire as organization_wire
from services.platform.messaging.broker import Message, QueueSpec, queue_name
from services.platform.messaging.consumer import HandlerContext
from services.platform.process import run_forever
from services.platform.server.host import Runtime, ServiceHost, Servicer, Wiring
from services.platform.settings import Settings

PROBE_SERVICE = "e2e.DrainProbe"
PROBE_QUEUE = "e2e_probe"
PROBE_PREFETCH, PROBE_CONCURRENCY = 4, 2
CLEANUP_SECONDS = 0.5  # what a cancelled handler spends cleaning up before its last transaction
ACTIVE: dict[str, str] = {}  # probe id -> kind, while its handler runs
HOSTS: list[ServiceHost] = []
DRAIN_BEGAN = asyncio.Event()  # set when the host's begin_drain() is called


def emit(event_name: str, **fields: Any) -> None:
    print(json.dumps({"event": event_name, **fields}), flush=True)


class _Probe:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def _touch_db(self, errors: list[str], where: str) -> None:
        """One real transaction; records (instead of raising) a failure caused by a closed engine."""
        if self.rt.db.closed:
            errors.append(f"{where}: closed flag set")
        try:
            async with self.rt.db.transaction() as session:
                await session.execute(text("SELECT 1"))
        except Exception as exc:
            errors.append(f"{where}: {type(exc).__name__}: {exc}")

    async def run(
        self, probe_id: str, kind: str, seconds: float, finish: Any, *, wait_for_drain: bool = True
    ) -> None:
        ACTIVE[probe_id] = kind
        errors: list[str] = []
        outcome, cleanup = "finished", ""
        emit("probe_started", id=probe_id, kind=kind)
        try:
            if wait_for_drain:
                await DRAIN_BEGAN.wait()
            await asyncio.sleep(seconds)
            await finish(errors)
        except asyncio.CancelledError:
            outcome, cleanup = "cancelled", "interrupted"
            await asyncio.sleep(CLEANUP_SECONDS)  # e.g. a peer call handing work back
            await self._touch_db(errors, "cleanup after cancel")
            cleanup = "done"
            raise
        finally:
            del ACTIVE[probe_id]
            emit("probe_ended", id=probe_id, kind=kind, outcome=outcome, cleanup=cleanup, db_errors=errors)

    async def slow(self, request: bytes, _context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        spec = json.loads(request)
        await self.run(
            spec["id"], "rpc", float(spec["seconds"]), lambda errors: self._touch_db(errors, "after sleep")
        )
        return json.dumps({"id": spec["id"]}).encode()

    async def handle(self, message: Message, ctx: HandlerContext) -> None:
        spec = json.loads(message.body)

        async def finish(errors: list[str]) -> None:
            if self.rt.db.closed:
                errors.append("commit: closed flag set")
            async with ctx.transaction() as session:  # the inbox row is the handler's effect
                await session.execute(text("SELECT 1"))

        await self.run(
            spec["id"],
            "queue",
            float(spec["seconds"]),
            finish,
            wait_for_drain=bool(spec.get("wait_for_drain", True)),
        )


def _instrument(rt: Runtime) -> None:
    db = rt.db
    original = db.dispose

    async def dispose() -> None:
        host = HOSTS[0]
        emit(
            "probe_db_dispose",
            active_probes=dict(ACTIVE),
            active_rpcs=host.guard.active,
            active_handlers=rt.worker.active,
        )
        await original()

    db.dispose = dispose  # type: ignore[method-assign]

    @event.listens_for(db.engine.sync_engine, "checkout")
    def _checkout(*_: Any) -> None:
        if db.closed:
            emit("probe_checkout_after_dispose")


def probe_wire(rt: Runtime) -> Wiring:
    """The organization service's wiring plus the probe servicer and queue."""
    wiring = organization_wire(rt)
    probe = _Probe(rt)
    handler = grpc.method_handlers_generic_handler(
        PROBE_SERVICE, {"Slow": grpc.unary_unary_rpc_method_handler(probe.slow)}
    )
    wiring.servicers.append(
        Servicer(lambda impl, server: server.add_generic_rpc_handlers((impl,)), handler, PROBE_SERVICE)
    )
    spec = QueueSpec(
        queue_name(rt.settings.name_prefix, "organization", PROBE_QUEUE), prefetch=PROBE_PREFETCH
    )
    # Registered here rather than through `wiring.queues` to set a concurrency below the prefetch.
    rt.worker.register(spec, probe.handle, concurrency=PROBE_CONCURRENCY)
    _instrument(rt)
    return wiring


def main() -> int:
    settings = Settings()

    def build(broker: Any) -> list[ServiceHost]:
        host = ServiceHost(settings, "organization", broker, probe_wire)
        begin_drain = host.begin_drain

        async def begin_drain_observed(deadline: float | None = None) -> None:
            DRAIN_BEGAN.set()
            await begin_drain(deadline)

        host.begin_drain = begin_drain_observed  # type: ignore[method-assign]
        HOSTS.append(host)
        return [host]

    run_forever(settings, "organization", build)
    return 0


if __name__ == "__main__":
    sys.exit(main())
