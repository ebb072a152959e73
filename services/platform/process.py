"""Run one OS process of the mesh: a set of components (service hosts, the gateway) sharing one broker,
an admin port, signal handling, and the drain sequence (README "Shutdown"; anchors.md §3.6):

1. SIGTERM/SIGINT or POST /drain → draining: readiness NOT_SERVING, new RPCs UNAVAILABLE, consumers
   cancelled (undelivered work requeued), every Watch stream ends with END `draining` + resume token.
   One deadline is fixed at this moment: drain start + readiness delay + grace. Every later step gets
   what is left of it (the wait for stream ENDs included), so nothing adds to the budget.
2. Optional readiness delay (when no preStop sleep covers endpoint removal), until drain start + delay.
3. In-flight RPCs, queue handlers and gateway requests get until the deadline, then are cancelled and
   get until deadline + unwind_seconds to run their cleanup.
4. Only then: outbox relay, watch hub, channels, database engines, broker are closed.
With the in-process broker (embedded), step 1 begins with `MemoryBroker.settle`: nobody else will consume
its queues, so the consumers run them empty (at most half the grace) before they are cancelled.
Each step is logged with active counts and what they are (RPC methods, queues, stream kinds), so a slow
stop explains itself.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

from services.platform.aio import cancel_and_log, wait_event
from services.platform.logging import configure, get_logger
from services.platform.messaging.broker import Broker
from services.platform.server import metrics
from services.platform.server.admin import admin_app
from services.platform.server.http import HttpServer
from services.platform.settings import Settings

log = get_logger("foundry.process")
TOTALS = ("active_rpcs", "active_handlers", "open_streams")


def _waited_on(snapshot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per component, the work the drain waited for: the non-empty breakdowns of its snapshot
    (`active_rpc_methods`, `active_handlers_by_queue`, `open_streams_by_kind`, ...)."""
    out: dict[str, dict[str, Any]] = {}
    for part in snapshot["components"]:
        details = {k: v for k, v in part.items() if isinstance(v, dict) and v}
        if details:
            out[str(part.get("service", "?"))] = details
    return out


class Component(Protocol):
    """Something a process runs and drains (a ServiceHost, the gateway)."""

    @property
    def name(self) -> str: ...
    @property
    def ready(self) -> bool: ...

    async def start(self) -> int: ...
    async def stop_accepting(self) -> None: ...
    async def begin_drain(self, deadline: float | None = None) -> None: ...
    async def wait_idle(self, timeout: float) -> dict[str, bool]: ...
    async def close(self) -> None: ...
    def snapshot(self) -> dict[str, Any]: ...


def make_broker(settings: Settings, name: str = "") -> Broker:
    """RabbitMQ when FOUNDRY_AMQP_URL is set, otherwise the in-process broker (embedded mode).

    `name` (the process name) names the AMQP connection `<name>@<host>:<pid>`."""
    if settings.amqp_url:
        from services.platform.messaging.amqp import AmqpBroker

        return AmqpBroker(
            settings.amqp_url,
            prefix=settings.name_prefix,
            settings=settings.messaging,
            connection_name=f"{name or 'foundry'}@{socket.gethostname()}:{os.getpid()}",
        )
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
        self.waiting_for = ""  # why the process is not ready yet (shown on /readyz)
        self.shutdown = asyncio.Event()
        self.drained = asyncio.Event()
        self.drain_started_at: float | None = None  # time.monotonic() when the drain began
        self.deadline: float | None = None  # drain start + readiness delay + grace
        self.admin: HttpServer | None = None
        # pid and host (the pod name in Kubernetes) tell the replicas of one service apart in drain logs.
        self.log = log.bind(pid=os.getpid(), host=socket.gethostname())
        # Export the drain series from the start (0 / empty) so dashboards and alerts see them exist.
        metrics.DRAINING.labels(name).set(0)
        metrics.DRAIN_SECONDS.labels(name)

    def not_ready_reason(self) -> str:
        """Why /readyz answers 503 ("" when ready): draining, still starting (and what it waits for), or
        the message broker connection lost after start-up (until aio-pika has re-established it)."""
        if self.draining:
            return "draining"
        if not self.ready:
            return f"starting: waiting for {self.waiting_for}" if self.waiting_for else "starting"
        return self.broker.unavailable_reason

    def snapshot(self) -> dict[str, Any]:
        parts = [c.snapshot() for c in self.components]
        totals = {k: sum(int(p.get(k, 0)) for p in parts) for k in TOTALS}
        waiting = {"waiting_for": self.waiting_for} if self.waiting_for else {}
        return {"process": self.name, **totals, **waiting, "components": parts}

    async def request_drain(self) -> None:
        """Begin the drain now (idempotent); the full stop follows on SIGTERM or right after for /drain.

        During start-up only the stop is recorded: start() finishes (so nothing starts consuming or turns
        ready behind the drain's back), then `run()` drains everything at once."""
        if not self.ready and not self.draining:
            self.shutdown.set()
            return
        if not self.draining:
            self.draining = True
            drain = self.settings.drain
            self.drain_started_at = now = time.monotonic()
            self.deadline = deadline = now + drain.readiness_delay_seconds + drain.grace_seconds
            metrics.DRAINING.labels(self.name).set(1)
            self.log.info(
                "drain_started",
                deadline_in_seconds=round(deadline - now, 3),
                unwind_seconds=drain.unwind_seconds,
                **self.snapshot(),
            )
            # Step 1 at once everywhere: readiness off, new requests refused.
            await asyncio.gather(*(c.stop_accepting() for c in self.components))
            settle = getattr(self.broker, "settle", None)  # the in-process broker (embedded mode)
            if settle is not None:  # nobody else will consume its queues: let ours run them empty first,
                left = await settle(now + (deadline - now) / 2)  # leaving half the grace to the rest
                self.log.info("in_process_queues_settled", messages_left=left)
            await asyncio.gather(*(c.begin_drain(deadline) for c in self.components))
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
        if not await self._connect_broker():
            return  # stopped while waiting for the broker: nothing else was started
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

    async def _connect_broker(self) -> bool:
        """Connect the broker, retrying with backoff (1 s doubling to 30 s) while it is unreachable;
        /readyz says why meanwhile. False when a stop was requested first (SIGTERM never waits on a
        broker that does not answer)."""
        delay = 1.0
        while True:
            attempt = asyncio.ensure_future(self.broker.connect())
            stop = asyncio.ensure_future(self.shutdown.wait())
            await asyncio.wait({attempt, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not attempt.done():
                # Bounded: a connect that swallows the cancel must not hang the stop.
                await cancel_and_log([attempt], self.log, "broker_connect_ignored_cancel")
                self.log.info("start_aborted", waiting_for="message broker")
                return False
            error = attempt.exception()
            if error is None:
                self.waiting_for = ""
                return True
            self.waiting_for = f"message broker: {error}"
            self.log.warning("broker_connect_failed", error=str(error), retry_in_seconds=delay)
            if await wait_event(self.shutdown, delay):
                self.log.info("start_aborted", waiting_for="message broker")
                return False
            delay = min(delay * 2, 30.0)

    async def stop(self) -> None:
        """The drain sequence; safe to call once shutdown was requested (or directly, e.g. in tests)."""
        await self.request_drain()
        drain = self.settings.drain
        started = self.drain_started_at if self.drain_started_at is not None else time.monotonic()
        deadline = self.deadline if self.deadline is not None else started + drain.grace_seconds
        delay_left = started + drain.readiness_delay_seconds - time.monotonic()
        if drain.readiness_delay_seconds and delay_left > 0:
            self.log.info("drain_readiness_delay", seconds=round(delay_left, 3))
            await asyncio.sleep(delay_left)
        before = self.snapshot()
        left = max(0.0, deadline - time.monotonic())
        results = await asyncio.gather(*(c.wait_idle(left) for c in self.components))
        waited = time.monotonic() - started
        self.log.info(
            "drain_finished",
            duration_ms=round(waited * 1000),
            waited_for=[k for k in TOTALS if before[k]],
            waited_on=_waited_on(before),
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
    broker = make_broker(settings, name)
    process = Process(settings, name, build(broker), broker)
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()  # keep a reference until the drain request ran

    def on_signal(sig: signal.Signals) -> None:
        process.log.info("signal", signal=sig.name)
        task = asyncio.ensure_future(process.request_drain())
        pending.add(task)
        task.add_done_callback(pending.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await process.start()
    except BaseException:
        process.log.exception("start_failed", process=name)
        await process.stop()
        raise
    if not process.ready:  # stopped before the broker answered: nothing to drain
        if process.admin:
            await process.admin.stop()
        await process.broker.close()
        return
    _freeze_startup_objects()
    await process.shutdown.wait()
    await process.stop()


def _freeze_startup_objects() -> None:
    """Move everything allocated during start-up (modules, descriptors, metadata, caches) out of the
    garbage collector's reach. Each full (generation 2) collection scans every tracked object: with
    the embedded mesh's start-up heap one took 75-115 ms on this machine, stalling every stream and
    RPC of the process. These objects live as long as the process anyway (`gc.freeze`, CPython ≥ 3.7)."""
    gc.collect()
    gc.freeze()


def _uvloop_is_safe() -> bool:
    """uvloop starts subprocesses with fork(), so gRPC's fork handlers run in the child: with gRPC fork
    support on (grpcio's default) about 1 child in 10 (git, agents) died with SIGSEGV under RPC load.
    asyncio uses vfork and is unaffected. GRPC_ENABLE_FORK_SUPPORT is read when grpc is imported, so
    only the environment the process started with can turn it off."""
    return os.environ.get("GRPC_ENABLE_FORK_SUPPORT", "").strip().lower() in ("0", "false", "no")


def loop_runner(*, spawns_processes: bool) -> Callable[[Coroutine[Any, Any, None]], None]:
    """`uvloop.run` when uvloop is installed and fork-safe (`_uvloop_is_safe`), else `asyncio.run`.

    `spawns_processes` (a process hosting the sandbox service: git, bubblewrap and agents on every
    task's way to ready) keeps asyncio: uvloop starts a child with fork(), which copies the page
    tables of the whole process (13.4 ms per child with a 300 MB heap on this machine), where
    asyncio's subprocess.Popen uses vfork (2.1 ms); `bench agent_ready` measured the warm p50 at
    404 ms on uvloop against 236-329 ms on asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    if _uvloop_is_safe() and not spawns_processes:
        return uvloop.run
    return asyncio.run


def run_forever(
    settings: Settings,
    name: str,
    build: Callable[[Broker], Sequence[Component]],
    *,
    spawns_processes: bool = False,
) -> None:
    """Entry point used by `python -m ...`, on the loop `loop_runner` picks."""
    loop_runner(spawns_processes=spawns_processes)(run(settings, name, build))
