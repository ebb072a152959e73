"""`ServiceHost`: everything one service needs to run, built in one place and stopped in drain order.

A service supplies a `wire(runtime) -> Wiring` function (its `__main__`/`app.py`): it builds its domain
from the `Runtime` (database, outbox, worker, watch hub, peer channels) and returns its servicers and
queue handlers. The host owns the gRPC server, health, reflection, interceptors and the lifecycle.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_interceptor.server import AsyncServerInterceptor
from grpc_reflection.v1alpha import reflection

from services.platform.aio import cancel_and_log, wait_event
from services.platform.authz import Membership
from services.platform.channels import Channels
from services.platform.db import Database
from services.platform.db.migrations import upgrade
from services.platform.logging import get_logger
from services.platform.messaging.broker import Broker, QueueSpec
from services.platform.messaging.consumer import Handler, Worker
from services.platform.outbox import Outbox, OutboxRelay
from services.platform.server.health import Health
from services.platform.server.interceptors import CallerIdentity, DrainGuard, ErrorMapping, RequestContext
from services.platform.settings import ServiceName, Settings
from services.platform.watch import WatchHub

log = get_logger("foundry.host")
# Longest wait in begin_drain() for Watch streams to send their END `draining` (never past the deadline).
STREAM_END_WAIT_SECONDS = 5.0
STREAM_END_MARGIN_SECONDS = 30.0


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """gRPC server options. A connection older than `grpc_max_connection_age_seconds` gets GOAWAY, so
    clients rebalance across replicas; calls already on it then have the grace period to finish. The
    grace outlasts the longest Watch stream (`watch.max_stream_seconds`, which ends with END `rotate`
    and its resume token) so a transport limit never cuts a stream with UNAVAILABLE."""
    age_ms = int(settings.grpc_max_connection_age_seconds * 1000)
    grace_ms = int((settings.watch.max_stream_seconds + STREAM_END_MARGIN_SECONDS) * 1000)
    return [
        ("grpc.so_reuseport", 0),  # a port clash must fail loudly, not silently share traffic
        ("grpc.max_connection_age_ms", age_ms),
        ("grpc.max_connection_age_grace_ms", grace_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]


@dataclass
class Runtime:
    """What a service's wiring receives. Everything here is started and stopped by the host."""

    settings: Settings
    service: ServiceName
    db: Database
    broker: Broker
    outbox: Outbox
    worker: Worker
    hub: WatchHub
    peers: Channels


@dataclass
class Servicer:
    """One gRPC service implementation: `add(servicer, server)` is the generated `add_*_to_server`."""

    add: Callable[[Any, grpc.aio.Server], None]
    impl: Any
    full_name: str


@dataclass
class Wiring:
    """What a service hands back to the host."""

    servicers: list[Servicer]
    queues: list[tuple[QueueSpec, Handler]] = field(default_factory=list)
    on_started: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    background: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    on_close: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Called once when the drain begins (SIGTERM), after new RPCs are refused and consuming stopped.
    on_drain: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Innermost server interceptors of the service's own (after the host's; they see the verified caller).
    interceptors: list[AsyncServerInterceptor] = field(default_factory=list)
    # The service's membership cache: the host subscribes it to membership events once started (they
    # drop cached answers at once; the TTL is only the fallback) and unsubscribes it on close.
    membership: Membership | None = None


Wire = Callable[[Runtime], "Wiring | Awaitable[Wiring]"]


class ServiceHost:
    """Runs one service: its database, outbox relay, queue worker, watch hub and gRPC server.

    Lifecycle: `start()` → (serving) → `begin_drain()` → `wait_idle(grace)` → `close()`.
    """

    def __init__(
        self, settings: Settings, service: ServiceName, broker: Broker, wire: Wire, *, port: int | None = None
    ) -> None:
        self.settings = settings
        self.service = service
        self.broker = broker
        self.wire = wire
        self.requested_port = settings.port_of(service) if port is None else port
        self.port = 0
        self.guard = DrainGuard(service)
        self.ready = False
        self.draining = False
        self._tasks: list[asyncio.Task[None]] = []
        self.db: Database | None = None
        self.runtime: Runtime | None = None
        self.wiring: Wiring | None = None
        self.server: grpc.aio.Server | None = None
        self.health: Health | None = None

    @property
    def name(self) -> str:
        return self.service

    async def start(self) -> int:
        """Migrate, wire, bind and start serving; returns the bound port."""
        s = self.settings
        self.db = db = Database(
            s.database_url_for(self.service),
            schema=s.schema_for(self.service),
            pool_size=s.database_pool_size,
            connect_timeout=s.database_connect_timeout_seconds,
        )
        if db.is_sqlite:
            s.data_dir.mkdir(parents=True, exist_ok=True)
        if s.migrate_on_start:
            await upgrade(db, self.service)
        peers = Channels(s, self.service, map_errors=True)
        self.relay = OutboxRelay(db, self.broker, s.messaging, name=self.service)
        outbox = Outbox(notify=self.relay.wake)
        worker = Worker(self.broker, service=self.service, settings=s.messaging, database=db)
        hub = WatchHub(db, self.broker, s.watch, service=self.service)
        self.runtime = Runtime(s, self.service, db, self.broker, outbox, worker, hub, peers)
        wiring = self.wire(self.runtime)
        self.wiring = wiring = await wiring if inspect.isawaitable(wiring) else wiring

        self.server = server = grpc.aio.server(
            interceptors=[
                ErrorMapping(),
                self.guard,
                RequestContext(self.service),
                CallerIdentity(s.internal_auth_secret.get_secret_value()),
                *wiring.interceptors,
            ],
            options=server_options(self.settings),
        )
        names = [sv.full_name for sv in wiring.servicers]
        for sv in wiring.servicers:
            sv.add(sv.impl, server)
        self.health = Health(server, names)
        reflection.enable_server_reflection(
            [*names, "grpc.health.v1.Health", reflection.SERVICE_NAME], server
        )
        self.port = server.add_insecure_port(f"{s.bind_host}:{self.requested_port}")
        if self.port == 0:
            raise RuntimeError(f"{self.service}: cannot bind {s.bind_host}:{self.requested_port}")
        await self.health.starting()
        await server.start()
        await hub.start()
        for spec, handler in wiring.queues:
            worker.register(spec, handler)
        await worker.start()
        self._tasks.append(asyncio.create_task(self.relay.run(), name=f"{self.service}:outbox-relay"))
        for job in wiring.background:
            self._tasks.append(asyncio.create_task(job(), name=f"{self.service}:{job.__name__}"))
        if wiring.membership is not None:
            await wiring.membership.listen(self.broker)
        for hook in wiring.on_started:
            await hook()
        await self.health.ready()
        await self.health.broker(self.broker.unavailable_reason)
        self.broker.add_connection_listener(self.health.broker)
        self.ready = True
        log.info(
            "service_started", service=self.service, port=self.port, database=db.engine.url.render_as_string()
        )
        return self.port

    def snapshot(self) -> dict[str, Any]:
        """Active work, for drain logs and /readyz: counts, and what they are (RPC methods, queues,
        stream kinds), so a slow stop says what it waited for."""
        rt = self.runtime
        return {
            "service": self.service,
            "active_rpcs": self.guard.active,
            "active_handlers": rt.worker.active if rt else 0,
            "open_streams": rt.hub.open_streams if rt else 0,
            "active_rpc_methods": self.guard.active_methods(),
            "active_handlers_by_queue": (
                {q: n for q, n in rt.worker.active_by_queue().items() if n} if rt else {}
            ),
            "open_streams_by_kind": rt.hub.open_streams_by_kind() if rt else {},
        }

    async def stop_accepting(self) -> None:
        """Readiness off and new RPCs refused (UNAVAILABLE); queue consumers and streams keep running."""
        if not self.guard.draining:
            self.guard.start_draining()
            if self.health:
                await self.health.not_ready()

    async def begin_drain(self, deadline: float | None = None) -> None:
        """Readiness off, refuse new RPCs, stop consuming, end every watch stream with `draining`.

        `deadline` (time.monotonic()) is the drain's grace deadline: the wait for streams to send their
        END is part of it, never added to it."""
        if self.draining:
            return
        self.draining = True
        await self.stop_accepting()
        if self.runtime:
            await self.runtime.worker.stop_consuming()
            for hook in self.wiring.on_drain if self.wiring else []:
                await hook()
            wait = STREAM_END_WAIT_SECONDS
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - time.monotonic()))
            await self.runtime.hub.drain(wait_seconds=wait)

    async def wait_idle(self, timeout: float) -> dict[str, bool]:
        """Let in-flight RPCs and queue handlers finish, up to `timeout` seconds (the time left until the
        drain's deadline); then cancel what is left and give it until deadline + `drain.unwind_seconds`
        to run its cleanup. Returns whether everything finished before the deadline."""
        if self.runtime is None or self.server is None:  # start() failed before serving: nothing runs
            return {"rpcs_finished": True, "handlers_finished": True}
        server, worker = self.server, self.runtime.worker
        deadline = time.monotonic() + timeout
        unwind = self.settings.drain.unwind_seconds
        unwind_deadline = deadline + unwind

        def left(until: float) -> float:
            return max(0.0, until - time.monotonic())

        handlers_settled = asyncio.Event()

        async def rpcs() -> bool:
            done = await self.guard.wait_idle(timeout)
            # The port stays open (refusing with DRAINING) while queue handlers run, as up to now.
            await wait_event(handlers_settled, left(deadline))
            methods = self.guard.active_methods()
            # Anything still running at the grace deadline is cancelled by stop(), at the deadline: not
            # later because queue handlers are still unwinding.
            await server.stop(grace=left(deadline))
            if methods:
                log.warning("rpcs_cancelled_at_deadline", service=self.service, active_rpc_methods=methods)
            # stop() returns once it has *cancelled* those RPCs, not once their handlers have unwound:
            # their cleanup (`except CancelledError`/`finally`) may still use the database, so wait for it
            # (bounded) before close() disposes anything.
            if self.guard.active and not await self.guard.wait_idle(left(unwind_deadline)):
                log.warning(
                    "rpcs_still_unwinding",
                    service=self.service,
                    active_rpcs=self.guard.active,
                    active_rpc_methods=self.guard.active_methods(),
                    waited_seconds=unwind,
                )
            return done

        async def handlers() -> bool:
            try:
                return await worker.wait_idle(timeout, unwind=unwind)  # cancels at the deadline
            finally:
                handlers_settled.set()

        rpcs_done, handlers_done = await asyncio.gather(rpcs(), handlers())
        return {"rpcs_finished": rpcs_done, "handlers_finished": handlers_done}

    async def close(self) -> None:
        """Close resources, last: only reached when no handler is active (or all were cancelled)."""
        if self.server is not None:
            await self.server.stop(grace=None)
        # Tasks that ignore their cancel keep running: logged, and the rest is closed anyway.
        await cancel_and_log(self._tasks, log, "tasks_ignored_cancel", service=self.service)
        if self.runtime:
            await self.relay.stop()
            await self.runtime.hub.stop()
            for hook in self.wiring.on_close if self.wiring else []:
                await hook()
            if self.wiring and self.wiring.membership is not None:
                await self.wiring.membership.stop_listening()
            await self.runtime.peers.close()
        if self.db:
            await self.db.dispose()
