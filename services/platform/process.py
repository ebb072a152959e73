"""Run one OS process of the mesh: a set of components (service hosts, the gateway) sharing one broker,
an admin port, signal handling, and the drain sequence (README "Shutdown"; anchors.md §3.6):

1. SIGTERM/SIGINT or POST /drain → draining: readiness NOT_SERVING, new RPCs UNAVAILABLE, consumers
   cancelled (undelivered work requeued), every Watch stream ends with END `draining` + resume token.
2. Optional readiness delay (when no preStop sleep covers endpoint removal).
3. In-flight RPCs and queue handlers get until the grace deadline, then are cancelled.
4. Only then: outbox relay, watch hub, channels, database engines, broker are closed.
Each step is logged with active counts so a slow stop explains itself.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from services.platform.logging import configure, get_logger
from services.platform.messaging.broker import Broker
from services.platform.server import metrics
from services.platform.server.admin import admin_app
from services.platform.server.http import HttpServer
from services.platform.settings import Settings

log = get_logger("foundry.process")


class Component(Protocol):
    """Something a process runs and drains (a ServiceHost, the gateway)."""

    @property
    def name(self) -> str: ...
    @property
    def ready(self) -> bool: ...

    async def start(self) -> int: ...
    async def begin_drain(self) -> None: ...
    async def wait_idle(self, timeout: float) -> dict[str, bool]: ...
    async def close(self) -> None: ...
    def snapshot(self) -> dict[str, Any]: ...


def make_broker(settings: Settings) -> Broker:
    """RabbitMQ when FOUNDRY_AMQP_URL is set, otherwise the in-process broker (embedded mode)."""
    if settings.amqp_url:
        from services.platform.messaging.amqp import AmqpBroker

        return AmqpBroker(settings.amqp_url, prefix=settings.name_prefix, settings=settings.messaging)
    from services.platform.messaging.memory import MemoryBroker

    return MemoryBroker(settings=settings.messaging)


class Process:
    """Owns the components of one process and runs the drain sequence once."""

    def __init__(
        self, settings: Settings, name: str, components: Sequence[Component], broker: Broker
    ) -> None:
        self.settings = settings
        self.name = name
        self.components = list(components)
        self.broker = broker
        self.draining = False
        self.ready = False
        self.shutdown = asyncio.Event()
        self.drained = asyncio.Event()
        self.admin: HttpServer | None = None
        # pid and host (the pod name in Kubernetes) tell the replicas of one service apart in drain logs.
        self.log = log.bind(pid=os.getpid(), host=socket.gethostname())
        # Export the drain series from the start (0 / empty) so dashboards and alerts see them exist.
        metrics.DRAINING.labels(name).set(0)
        metrics.DRAIN_SECONDS.labels(name)

    def snapshot(self) -> dict[str, Any]:
        parts = [c.snapshot() for c in self.components]
        totals = {
            k: sum(int(p.get(k, 0)) for p in parts)
            for k in ("active_rpcs", "active_handlers", "open_streams")
        }
        return {"process": self.name, **totals, "components": parts}

    async def request_drain(self) -> None:
        """Begin the drain now (idempotent); the full stop follows on SIGTERM or right after for /drain.

        During start-up only the stop is recorded: start() finishes (so nothing starts consuming or turns
        ready behind the drain's back), then `run()` drains everything at once."""
        if not self.ready and not self.draining:
            self.shutdown.set()
            return
        if not self.draining:
            self.draining = True
            metrics.DRAINING.labels(self.name).set(1)
            self.log.info("drain_started", **self.snapshot())
            await asyncio.gather(*(c.begin_drain() for c in self.components))
        self.shutdown.set()

    async def start(self) -> None:
        if self.settings.metrics_port:
            self.admin = HttpServer(
                admin_app(self, self.request_drain),
                self.settings.bind_host,
                self.settings.metrics_port,
                name="admin",
            )
            await self.admin.start()
        await self.broker.connect()
        for component in self.components:
            port = await component.start()
            print(f"foundry: {component.name:<12} listening on {self.settings.bind_host}:{port}", flush=True)
        if self.admin:
            print(
                f"foundry: {'admin':<12} listening on {self.settings.bind_host}:{self.admin.port} "
                "(/metrics /livez /readyz /drain)",
                flush=True,
            )
        self.ready = True

    async def stop(self) -> None:
        """The drain sequence; safe to call once shutdown was requested (or directly, e.g. in tests)."""
        started = time.monotonic()
        await self.request_drain()
        drain = self.settings.drain
        if drain.readiness_delay_seconds:
            self.log.info("drain_readiness_delay", seconds=drain.readiness_delay_seconds)
            await asyncio.sleep(drain.readiness_delay_seconds)
        before = self.snapshot()
        results = await asyncio.gather(*(c.wait_idle(drain.grace_seconds) for c in self.components))
        waited = time.monotonic() - started
        self.log.info(
            "drain_finished",
            duration_ms=round(waited * 1000),
            waited_for=[k for k in ("active_rpcs", "active_handlers", "open_streams") if before[k]],
            cancelled_after_grace=[
                c.name for c, r in zip(self.components, results, strict=True) if not all(r.values())
            ],
            **self.snapshot(),
        )
        self.log.info("cleanup_started", process=self.name)
        for component in reversed(self.components):
            await component.close()
        await self.broker.close()
        # Observed while the admin port still serves (a last scrape can see it), then the port closes.
        metrics.DRAIN_SECONDS.labels(self.name).observe(time.monotonic() - started)
        elapsed_ms = round((time.monotonic() - started) * 1000)
        self.log.info("cleanup_finished", process=self.name, duration_ms=elapsed_ms)
        if self.admin:
            await self.admin.stop()
        self.drained.set()


async def run(settings: Settings, name: str, build: Callable[[Broker], Sequence[Component]]) -> None:
    """Start the process, serve until SIGTERM/SIGINT or /drain, then drain and exit."""
    configure(settings.log_level, settings.log_format)
    broker = make_broker(settings)
    process = Process(settings, name, build(broker), broker)
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()  # keep a reference until the drain request ran

    def on_signal(sig: signal.Signals) -> None:
        log.info("signal", signal=sig.name)
        task = asyncio.ensure_future(process.request_drain())
        pending.add(task)
        task.add_done_callback(pending.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await process.start()
    except BaseException:
        log.exception("start_failed", process=name)
        await process.stop()
        raise
    await process.shutdown.wait()
    await process.stop()


def _uvloop_is_safe() -> bool:
    """uvloop starts subprocesses with fork(), so gRPC's fork handlers run in the child: with gRPC fork
    support on (grpcio's default) about 1 child in 10 (git, agents) died with SIGSEGV under RPC load.
    asyncio uses vfork and is unaffected. GRPC_ENABLE_FORK_SUPPORT is read when grpc is imported, so
    only the environment the process started with can turn it off."""
    return os.environ.get("GRPC_ENABLE_FORK_SUPPORT", "").strip().lower() in ("0", "false", "no")


def run_forever(settings: Settings, name: str, build: Callable[[Broker], Sequence[Component]]) -> None:
    """Entry point used by `python -m ...`: uvloop when available and fork-safe, else asyncio."""
    try:
        import uvloop
    except ImportError:
        uvloop = None  # type: ignore[assignment]
    if uvloop is not None and _uvloop_is_safe():
        uvloop.run(run(settings, name, build))
    else:
        asyncio.run(run(settings, name, build))
