"""The messaging interface every service codes against; `amqp.AmqpBroker` (RabbitMQ, production) and
`memory.MemoryBroker` (in-process, embedded mode only) implement it with the same semantics.

Topology (names start with `Settings.name_prefix`, default `foundry`):

    <prefix>.events       topic exchange; events published through the outbox, routing keys
                          `<service>.<entity>.<event>` (e.g. `task.summary.updated`)
    <prefix>.<svc>.<name> durable work queue (quorum by default) with
                          - dead-letter queue `<queue>.dlq` (via the `<prefix>.dlx` exchange), and
                          - delayed retry queues `<queue>.retry.<n>` whose TTL dead-letters back to it
    <prefix>.broadcast    fanout-style exchange for non-durable notifications to every replica
                          (watch hubs use it to hear about commits made by other replicas)
    (exclusive queue)     `subscribe_events`: a per-process copy of matching events (cache
                          invalidation in every replica)

Work messages are published to the default exchange with the queue's name as routing key.
Delivery is at least once: handlers must be idempotent (see `services.platform.outbox.inbox`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.platform.context import request_id

REQUEST_ID = "x-request-id"
ATTEMPT = "x-attempt"
MESSAGE_TYPE = "x-message-type"
# Unix time in integer milliseconds when the message was first written: its outbox row, or the
# publish when it bypassed the outbox. Retries keep it; the Worker measures queue latency (enqueue →
# handler start, first attempts only) from it, so clocks of different hosts only need to agree
# roughly. An integer because AMQP field tables carry a Python float as float32 (pamqp type 'f'),
# which rounds today's unix seconds to a multiple of 128.
ENQUEUED_AT = "x-enqueued-at-ms"


def outgoing_headers(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """The headers a transport publishes: `headers` plus, unless already there, the current request
    id (`x-request-id`) and the enqueue time (`x-enqueued-at-ms`)."""
    out = dict(headers or {})
    rid = request_id()
    if rid and REQUEST_ID not in out:
        out[REQUEST_ID] = rid
    out.setdefault(ENQUEUED_AT, time.time_ns() // 1_000_000)
    return out


@dataclass(frozen=True, slots=True)
class Message:
    """One delivered message. `attempt` is 1 on first delivery and grows with each retry."""

    message_id: str
    body: bytes
    headers: Mapping[str, Any]
    routing_key: str
    exchange: str = ""
    attempt: int = 1
    redelivered: bool = False


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A queue a service consumes.

    `bindings` are routing-key patterns on the events exchange (an event subscription); a queue
    without bindings is a work queue fed by name. `max_attempts`/`prefetch` default to Settings.
    """

    name: str
    bindings: tuple[str, ...] = ()
    prefetch: int | None = None
    max_attempts: int | None = None
    retry_delays: tuple[float, ...] = field(default=())


class Delivery(Protocol):
    """A message handed to a consumer; exactly one of the settle methods must be called."""

    message: Message

    async def ack(self) -> None:
        """The effect is committed: forget the message."""

    async def retry(self, delay_seconds: float) -> None:
        """Deliver again after `delay_seconds` with attempt + 1 (republish to a delay queue, then ack)."""

    async def dead_letter(self, reason: str) -> None:
        """Give up: move the message to the queue's dead-letter queue with `reason` in a header."""

    async def requeue(self) -> None:
        """Not started (e.g. draining): give it back to the queue for another consumer, attempt unchanged."""


DeliveryHandler = Callable[[Delivery], Awaitable[None]]
BroadcastHandler = Callable[[str, bytes], Awaitable[None]]
# Called with why the broker became unusable ("message broker connection lost (…); reconnecting"), and
# with "" once it is usable again (see `Broker.add_connection_listener`).
ConnectionListener = Callable[[str], Awaitable[None]]


class Subscription(Protocol):
    async def cancel(self) -> None:
        """Stop receiving new deliveries (basic.cancel). Deliveries already handed over still settle."""


class Broker(Protocol):
    """Transport for work queues, events and broadcasts. All methods are coroutine-safe."""

    async def connect(self) -> None:
        """Open connections and declare the exchanges (idempotent)."""

    async def declare_queue(self, spec: QueueSpec) -> None:
        """Declare `spec` with its DLQ, retry queues and bindings (idempotent)."""

    async def publish(
        self,
        *,
        exchange: str,
        routing_key: str,
        body: bytes,
        message_id: str,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        """Publish persistently and return once the broker confirmed it.

        `exchange` is "" (default exchange: routing_key names a work queue) or "events" (the topic
        exchange). Raises `services.platform.errors.Unavailable` when the confirm does not arrive in
        time or the message was unroutable (work queue not declared).
        """

    async def consume(self, spec: QueueSpec, handler: DeliveryHandler) -> Subscription:
        """Deliver messages of `spec` to `handler`, at most `prefetch` unsettled at a time."""

    async def broadcast(self, topic: str, body: bytes) -> None:
        """Best-effort, non-durable notification to every process subscribed to `topic` (incl. this one)."""

    async def subscribe_broadcast(self, topic_pattern: str, handler: BroadcastHandler) -> Subscription:
        """Receive broadcasts whose topic matches `topic_pattern` (AMQP topic syntax: `*`, `#`)."""

    async def subscribe_events(self, routing_pattern: str, handler: BroadcastHandler) -> Subscription:
        """Give this process a copy of every later event whose routing key matches `routing_pattern`.

        Unlike a queue binding (one consumer of a service gets each event), every subscribed
        process receives each event, as `handler(routing_key, body)`; nothing is kept while the
        process is not subscribed (an exclusive, auto-deleted queue). For caches every replica
        must invalidate (`services.platform.authz.Membership`). Handler errors are logged.
        """

    async def close(self) -> None:
        """Close channels and connections. Called last in the drain."""

    @property
    def unavailable_reason(self) -> str:
        """Why the broker cannot be used right now (its connection was lost after connect() and is being
        re-established), "" while it can (and before connect() or after close())."""

    def add_connection_listener(self, listener: ConnectionListener) -> None:
        """Call `listener(unavailable_reason)` whenever the connection is lost or comes back (with "")."""


def retry_ladder(
    spec: QueueSpec, *, max_attempts: int, base_delay: float, max_delay: float
) -> tuple[float, ...]:
    """Delays (seconds) before attempts 2..max_attempts of a message of `spec`.

    `spec.retry_delays` wins when given (the last value repeats); otherwise `base_delay` doubling per
    attempt, capped at `max_delay`. The AMQP transport declares one retry queue per distinct value.
    """
    count = max(1, max_attempts - 1)
    if spec.retry_delays:
        delays = list(spec.retry_delays)
        return tuple(delays[min(i, len(delays) - 1)] for i in range(count))
    return tuple(min(base_delay * (2**i), max_delay) for i in range(count))


def queue_name(prefix: str, service: str, name: str) -> str:
    """Full name of a work queue: `<prefix>.<service>.<name>` (e.g. `foundry.task.provision`)."""
    return f"{prefix}.{service}.{name}"
