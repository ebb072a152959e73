"""The queue-consumer runner every service uses: `Worker`.

Per delivery: bind the request context (`x-request-id`, caller = the service), count the handler as
active, run `handler(message, ctx)`, then settle:

    success                                  ack
    already processed (inbox row exists)     ack, effect not run again
    FoundryError(retryable=False)            dead-letter immediately
    retryable FoundryError or any other      delayed retry (base delay doubling, capped) until
    exception                                max_attempts deliveries, then dead-letter

Drain: `stop_consuming()` cancels the subscriptions and requeues deliveries that arrived but did not
start (a delivery starts when it gets one of the queue's `concurrency` slots); `wait_idle(timeout)`
lets started handlers finish (they commit, then ack) and cancels what is left after `timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy.ext.asyncio import AsyncSession

from services.platform.aio import cancel_and_log, wait_event
from services.platform.context import bound
from services.platform.db.engine import Database
from services.platform.errors import FoundryError, InvalidArgument
from services.platform.identity import Caller
from services.platform.logging import get_logger
from services.platform.messaging.broker import (
    ENQUEUED_AT,
    REQUEST_ID,
    Broker,
    Delivery,
    Message,
    QueueSpec,
    Subscription,
    retry_ladder,
)
from services.platform.outbox.inbox import claim
from services.platform.settings import MessagingSettings

log = get_logger(__name__)

HANDLED = Counter(
    "foundry_messages_handled_total",
    "Queue deliveries settled by the Worker",
    ["service", "queue", "outcome"],  # outcome: ack | duplicate | retry | dead_letter | requeue
)
ACTIVE = Gauge("foundry_message_handlers_active", "Handlers running now", ["service", "queue"])
DURATION = Histogram("foundry_message_handler_seconds", "Handler run time", ["service", "queue"])
QUEUE_LATENCY = Histogram(
    "foundry_message_queue_latency_seconds",
    "Enqueue (outbox row or publish, header x-enqueued-at-ms) to handler start, first attempts only",
    ["service", "queue"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)


def _observe_latency(service: str, queue: str, message: Message) -> None:
    """Queue latency of a first delivery; a retry's wait is its backoff, not the queue's."""
    enqueued = message.headers.get(ENQUEUED_AT)
    if message.attempt == 1 and isinstance(enqueued, int) and not isinstance(enqueued, bool):
        QUEUE_LATENCY.labels(service, queue).observe(max(0.0, time.time() - enqueued / 1000))


class _AlreadyProcessed(Exception):
    """Raised by `HandlerContext.transaction()` when the inbox already holds the message: skip the effect."""


class HandlerContext:
    """What a handler gets next to its `Message`.

    Attributes:
        message: the delivery's message (also the handler's first argument).
        queue: the queue it came from.
        consumer: the inbox consumer name (`<service>:<queue>`).
        service: the service running the Worker.
    """

    def __init__(
        self,
        *,
        message: Message,
        queue: str,
        service: str,
        database: Database | None,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.message = message
        self.queue = queue
        self.service = service
        self.consumer = f"{service}:{queue}"
        self._database = database
        self._stopping = stopping

    @property
    def stopping(self) -> bool:
        """True once the Worker stops consuming (the drain began): a handler that could go on with more
        work in this delivery should hand it to the queue instead, for a replica that stays."""
        return self._stopping()

    @property
    def attempt(self) -> int:
        """1 on first delivery, +1 per retry."""
        return self.message.attempt

    @contextlib.asynccontextmanager
    async def transaction(self, *, background: bool = False) -> AsyncIterator[AsyncSession]:
        """A DB transaction that first records the message in the inbox.

        If the message's effect already committed (a redelivery), the block does not run: the Worker
        acks the message instead. Write the effect inside the block; the Worker acks after it returns.
        Raises RuntimeError when the Worker has no Database, and InvalidArgument (dead-lettered) when
        the message has no id to deduplicate on. `background` is passed to `Database.transaction`.
        """
        if self._database is None:
            raise RuntimeError("this Worker has no Database; pass database= to use ctx.transaction()")
        if not self.message.message_id:
            raise InvalidArgument("message has no message_id to deduplicate on", reason="NO_MESSAGE_ID")
        async with self._database.transaction(background=background) as session:
            if not await claim(session, consumer=self.consumer, message_id=self.message.message_id):
                raise _AlreadyProcessed(self.message.message_id)
            yield session


Handler = Callable[[Message, HandlerContext], Awaitable[None]]


@dataclass
class _Registration:
    spec: QueueSpec
    handler: Handler
    concurrency: int
    active: int = 0
    slots: asyncio.Condition = field(default_factory=asyncio.Condition)


class Worker:
    """Runs the handlers of one service's queues.

    Args:
        broker: the transport (AMQP or in-process).
        service: service name; the caller identity of handlers and the inbox consumer prefix.
        settings: prefetch, max attempts and retry delays (QueueSpec fields override them).
        database: the service's Database, needed for `HandlerContext.transaction()`.
    """

    def __init__(
        self,
        broker: Broker,
        *,
        service: str,
        settings: MessagingSettings,
        database: Database | None = None,
    ) -> None:
        self._broker = broker
        self._service = service
        self._settings = settings
        self._database = database
        self._registrations: dict[str, _Registration] = {}
        self._subscriptions: list[Subscription] = []
        self._running: set[asyncio.Task[None]] = set()
        self._waiting = 0
        self._no_waiters = asyncio.Event()  # set while no delivery waits for a slot
        self._no_waiters.set()
        self._stopping = False
        self._idle = asyncio.Event()
        self._idle.set()

    def register(self, spec: QueueSpec, handler: Handler, *, concurrency: int | None = None) -> None:
        """Handle `spec` with `handler`, at most `concurrency` at once (default: the queue's prefetch)."""
        if spec.name in self._registrations:
            raise ValueError(f"queue {spec.name!r} already has a handler")
        prefetch = spec.prefetch or self._settings.prefetch
        self._registrations[spec.name] = _Registration(
            spec, handler, max(1, min(concurrency or prefetch, prefetch))
        )

    async def start(self) -> None:
        """Declare every registered queue (idempotent) and start consuming."""
        self._stopping = False
        for reg in self._registrations.values():
            await self._broker.declare_queue(reg.spec)
        for reg in self._registrations.values():
            self._subscriptions.append(await self._broker.consume(reg.spec, self._on_delivery_for(reg)))

    @property
    def active(self) -> int:
        """Handlers running now, over all queues."""
        return sum(r.active for r in self._registrations.values())

    def active_by_queue(self) -> dict[str, int]:
        """Handlers running now, per queue name."""
        return {name: r.active for name, r in self._registrations.items()}

    async def stop_consuming(self) -> None:
        """Cancel every subscription and requeue deliveries that have not started. Started ones go on."""
        self._stopping = True
        subs, self._subscriptions = self._subscriptions, []
        for sub in subs:
            await sub.cancel()
        for reg in self._registrations.values():
            async with reg.slots:
                reg.slots.notify_all()
        await self._no_waiters.wait()  # the woken waiters requeue their deliveries

    async def wait_idle(self, timeout: float, *, unwind: float | None = None) -> bool:
        """Wait up to `timeout` seconds for running handlers; cancel the rest. True when all finished.

        Cancelled handlers then run their cleanup (and requeue their message): wait for that up to
        `unwind` seconds (None: until they are done, cancelling again those that swallow it, for at
        most 10 s: `cancel_and_wait`), and log those still unwinding after it."""
        if not await wait_event(self._idle, timeout):
            tasks = list(self._running)
            busy = self.active_by_queue()
            for task in tasks:
                task.cancel()
            if unwind is None:
                # Bounded (re-cancelling): a handler that swallowed its cancel must not hang the stop.
                await cancel_and_log(tasks, log, "handlers_ignored_cancel", service=self._service)
            elif tasks:
                _, pending = await asyncio.wait(tasks, timeout=max(unwind, 0.0))
                if pending:
                    log.warning(
                        "handlers_still_unwinding",
                        service=self._service,
                        active_handlers=len(pending),
                        active_by_queue={q: n for q, n in self.active_by_queue().items() if n},
                        waited_seconds=unwind,
                    )
            log.info(
                "handlers_cancelled_at_deadline",
                service=self._service,
                cancelled=len(tasks),
                by_queue={q: n for q, n in busy.items() if n},
            )
            return False
        return True

    async def stop(self, timeout: float) -> bool:
        """`stop_consuming()` then `wait_idle(timeout)`."""
        await self.stop_consuming()
        return await self.wait_idle(timeout)

    # -- per delivery ------------------------------------------------------------------------------

    def _on_delivery_for(self, reg: _Registration) -> Callable[[Delivery], Awaitable[None]]:
        async def on_delivery(delivery: Delivery) -> None:
            self._waiting += 1
            self._no_waiters.clear()
            try:
                started = await self._acquire(reg)
                if not started:
                    HANDLED.labels(self._service, reg.spec.name, "requeue").inc()
                    await delivery.requeue()
            finally:
                self._waiting -= 1  # stop_consuming() returns once every unstarted delivery went back
                if not self._waiting:
                    self._no_waiters.set()
            if not started:
                return
            task = asyncio.current_task()
            assert task is not None
            self._running.add(task)
            try:
                await self._run(reg, delivery)
            finally:
                self._running.discard(task)
                await self._release(reg)

        return on_delivery

    async def _acquire(self, reg: _Registration) -> bool:
        """Take a slot; False when draining began first (the delivery must go back)."""
        async with reg.slots:
            await reg.slots.wait_for(lambda: self._stopping or reg.active < reg.concurrency)
            if self._stopping:
                return False
            reg.active += 1
            self._idle.clear()
            ACTIVE.labels(self._service, reg.spec.name).inc()
            return True

    async def _release(self, reg: _Registration) -> None:
        ACTIVE.labels(self._service, reg.spec.name).dec()
        async with reg.slots:
            reg.active -= 1
            reg.slots.notify()
        if self.active == 0:
            self._idle.set()

    async def _run(self, reg: _Registration, delivery: Delivery) -> None:
        message = delivery.message
        queue = reg.spec.name
        rid = message.headers.get(REQUEST_ID)
        with bound(request_id=str(rid) if rid else None, caller=Caller.service(self._service)):
            ctx = HandlerContext(
                message=message,
                queue=queue,
                service=self._service,
                database=self._database,
                stopping=lambda: self._stopping,
            )
            log_ = log.bind(queue=queue, message_id=message.message_id, attempt=message.attempt)
            _observe_latency(self._service, queue, message)
            started = time.perf_counter()
            try:
                await reg.handler(message, ctx)
            except _AlreadyProcessed:
                log_.info("message_duplicate_skipped")
                await self._settle(delivery, queue, "duplicate")
            except asyncio.CancelledError:
                # Cancelled by wait_idle(): nothing committed after the cancel point, give it back.
                log_.warning("message_handler_cancelled")
                with contextlib.suppress(Exception):
                    await asyncio.shield(delivery.requeue())
                HANDLED.labels(self._service, queue, "requeue").inc()
                raise
            except Exception as exc:
                await self._failed(reg, delivery, exc)
            else:
                log_.info("message_handled", seconds=round(time.perf_counter() - started, 4))
                await self._settle(delivery, queue, "ack")
            finally:
                DURATION.labels(self._service, queue).observe(time.perf_counter() - started)

    async def _settle(self, delivery: Delivery, queue: str, outcome: str) -> None:
        await delivery.ack()
        HANDLED.labels(self._service, queue, outcome).inc()

    async def _failed(self, reg: _Registration, delivery: Delivery, exc: Exception) -> None:
        message, spec = delivery.message, reg.spec
        max_attempts = spec.max_attempts or self._settings.max_attempts
        retryable = exc.retryable if isinstance(exc, FoundryError) else True
        reason = f"{type(exc).__name__}: {exc}"
        log_ = log.bind(queue=spec.name, message_id=message.message_id, attempt=message.attempt)
        if retryable and message.attempt < max_attempts:
            delay = self.retry_delay(spec, message.attempt)
            log_.warning("message_retry", error=reason, delay_seconds=delay, exc_info=exc)
            await delivery.retry(delay)
            HANDLED.labels(self._service, spec.name, "retry").inc()
        else:
            log_.error("message_dead_lettered", error=reason, retryable=retryable, exc_info=exc)
            await delivery.dead_letter(reason)
            HANDLED.labels(self._service, spec.name, "dead_letter").inc()

    def retry_delay(self, spec: QueueSpec, attempt: int) -> float:
        """Seconds to wait before delivery `attempt + 1` of a message of `spec`."""
        s = self._settings
        ladder = retry_ladder(
            spec,
            max_attempts=spec.max_attempts or s.max_attempts,
            base_delay=s.retry_delay_seconds,
            max_delay=s.retry_delay_max_seconds,
        )
        return ladder[min(attempt, len(ladder)) - 1]
