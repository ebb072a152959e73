"""RabbitMQ transport (aio-pika) of the `Broker` protocol, the production shape.

Topology (declared idempotently; `<p>` is the name prefix):

    <p>.events            topic exchange (durable): events from the outbox relay
    <p>.dlx               direct exchange: `<queue>.dlq` is bound to it with routing key `<queue>`
    <p>.broadcast         topic exchange: non-durable notifications to every subscribed process
    <queue>               durable work queue (quorum by default): x-dead-letter-exchange=<p>.dlx
    <queue>.dlq           where given-up messages wait for an operator
    <queue>.retry.<n>     delay step n (1-based): x-message-ttl = the step's delay, dead-letters back
                          to <queue> through the default exchange

Publishing waits for the publisher confirm (bounded by `confirm_timeout_seconds`). Work publishes
are mandatory: an unroutable one (queue not declared) comes back as basic.return and raises
`Unavailable`. Event publishes are not mandatory: an event nobody subscribes to is fine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from pamqp.common import FieldTable

from services.platform.errors import Unavailable
from services.platform.logging import get_logger
from services.platform.messaging.broker import (
    ATTEMPT,
    BroadcastHandler,
    ConnectionListener,
    DeliveryHandler,
    Message,
    QueueSpec,
    outgoing_headers,
    retry_ladder,
)
from services.platform.settings import MessagingSettings

log = get_logger(__name__)

DEAD_LETTER_REASON = "x-dead-letter-reason"
# A retried or dead-lettered copy travels through other exchanges; these keep where it first came from.
ORIGINAL_EXCHANGE = "x-original-exchange"
ORIGINAL_ROUTING_KEY = "x-original-routing-key"
# Guard against crash loops (a consumer killed before it acks, over and over): RabbitMQ dead-letters
# a quorum-queue message after this many failed deliveries, whatever our own attempt count says.
POISON_DELIVERY_LIMIT = 20
_PUBLISH_ERRORS = (aiormq.exceptions.AMQPError, aio_pika.exceptions.ChannelInvalidStateError, ConnectionError)


# Longest wait for the broker's answer to a call made on the way out (basic.cancel, queue.delete,
# connection.close). Once one went unanswered the broker is taken for wedged: later ones are not
# waited for, so a silent broker costs a stop at most this long once, whatever the number of consumers.
CLOSE_TIMEOUT_SECONDS = 5.0


class AmqpBroker:
    """`Broker` over RabbitMQ.

    Args:
        url: `amqp://user:pass@host:port/vhost`.
        prefix: first word of every exchange and queue name this broker declares (`Settings.name_prefix`).
        settings: prefetch, confirm timeout, retry ladder and queue type.
    """

    def __init__(
        self, url: str, *, prefix: str, settings: MessagingSettings, connection_name: str = ""
    ) -> None:
        self._url = url
        # Shown by `rabbitmqctl list_connections client_properties` and the management UI, so an
        # operator can tell which process holds a connection.
        self._client_properties: FieldTable = {"connection_name": connection_name} if connection_name else {}
        self._prefix = prefix
        self._settings = settings
        self._connection: AbstractRobustConnection | None = None
        self._publisher: AbstractChannel | None = None
        self._topology: AbstractChannel | None = None
        self._broadcast_channel: AbstractChannel | None = None
        self._consumer_channels: list[AbstractChannel] = []  # strong refs: robust restore needs them
        self._publisher_lock = asyncio.Lock()
        self._declared: set[str] = set()
        self._unanswered = False  # a call on the way out went unanswered (see CLOSE_TIMEOUT_SECONDS)
        self._lost = ""  # why the connection is down while aio-pika re-establishes it ("" when up)
        self._listeners: list[ConnectionListener] = []
        self._handlers: set[asyncio.Task[None]] = set()  # strong refs: see `consume`

    @property
    def events_exchange(self) -> str:
        return f"{self._prefix}.events"

    @property
    def dlx_exchange(self) -> str:
        return f"{self._prefix}.dlx"

    @property
    def broadcast_exchange(self) -> str:
        return f"{self._prefix}.broadcast"

    @property
    def unavailable_reason(self) -> str:
        """Why the connection is down ("" while up): set when aio-pika's robust connection reports it
        closed (broker stopped, crashed, unreachable, missed heartbeats), cleared once it has reconnected
        and restored every channel, consumer and declaration."""
        return self._lost

    def add_connection_listener(self, listener: ConnectionListener) -> None:
        self._listeners.append(listener)

    async def _on_connection_lost(
        self, connection: AbstractConnection | None, exc: BaseException | None
    ) -> None:
        if self._connection is None or connection is None or connection.is_closed:
            return  # our own close() (the drain), not a loss
        first = not self._lost
        why = (str(exc) or type(exc).__name__) if exc is not None else "closed"
        self._lost = f"message broker connection lost ({why}); reconnecting"
        if first:
            log.warning("amqp_connection_lost", error=why)
            await self._notify()

    async def _on_connection_restored(self, connection: AbstractRobustConnection | None) -> None:
        if self._connection is None or not self._lost:
            return
        log.info("amqp_connection_restored", was=self._lost)
        self._lost = ""
        await self._notify()

    async def _notify(self) -> None:
        for listener in list(self._listeners):
            try:
                await listener(self._lost)
            except Exception:
                log.exception("amqp_connection_listener_failed")

    async def connect(self) -> None:
        """Open the robust connection, the publisher channel (confirms) and declare the exchanges.

        Bounded by `connect_timeout_seconds` (a broker that accepts TCP and never answers must not hang
        a starting process). Raises Unavailable (`AMQP_UNAVAILABLE`, `AMQP_TIMEOUT`)."""
        if self._connection is not None:
            return
        timeout = self._settings.connect_timeout_seconds
        try:  # (aio-pika bounds the handshake; this also bounds declaring the topology)
            await asyncio.wait_for(self._connect(timeout), timeout + 1.0)
        except TimeoutError:
            raise Unavailable(
                f"RabbitMQ did not complete the AMQP handshake within {timeout:g} s", reason="AMQP_TIMEOUT"
            ) from None

    async def _connect(self, timeout: float) -> None:
        made: list[aio_pika.RobustConnection] = []

        def remember(*args: Any, **kwargs: Any) -> aio_pika.RobustConnection:
            made.append(aio_pika.RobustConnection(*args, **kwargs))
            return made[-1]

        try:
            self._connection = await aio_pika.connect_robust(
                self._url,
                client_properties=self._client_properties,
                timeout=timeout,
                connection_class=cast(Any, remember),
            )
            self._connection.close_callbacks.add(self._on_connection_lost)
            self._connection.reconnect_callbacks.add(self._on_connection_restored)
            self._topology = await self._connection.channel(publisher_confirms=False)
            await self._topology.declare_exchange(
                self.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            await self._topology.declare_exchange(
                self.dlx_exchange, aio_pika.ExchangeType.DIRECT, durable=True
            )
            await self._topology.declare_exchange(
                self.broadcast_exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            self._publisher = await self._open_publisher()
        except BaseException as exc:
            # A robust connection that never opened keeps reconnecting in the background (and holds
            # the process open): close it, also when the attempt was cancelled by a stop.
            self._connection = None
            for connection in made:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(connection.close(), CLOSE_TIMEOUT_SECONDS)
            if isinstance(exc, TimeoutError):
                raise Unavailable(
                    f"RabbitMQ did not complete the AMQP handshake within {timeout:g} s",
                    reason="AMQP_TIMEOUT",
                ) from None
            if isinstance(exc, (*_PUBLISH_ERRORS, OSError)):
                raise Unavailable(
                    f"cannot reach RabbitMQ: {exc or type(exc).__name__}", reason="AMQP_UNAVAILABLE"
                ) from exc
            raise

    async def declare_queue(self, spec: QueueSpec) -> None:
        """Declare the work queue, its DLQ, its retry queues and its event bindings (idempotent)."""
        await self._declare(self._require(self._topology), spec)

    async def publish(
        self,
        *,
        exchange: str,
        routing_key: str,
        body: bytes,
        message_id: str,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        """Publish persistently and wait for the confirm. Raises `Unavailable` (timeout, unroutable, nack)."""
        if exchange == "":
            target, mandatory = "", True
        elif exchange == "events":
            target, mandatory = self.events_exchange, False
        else:
            raise ValueError(f"unknown exchange {exchange!r} (use '' or 'events')")
        all_headers = outgoing_headers(headers)
        message = aio_pika.Message(
            body,
            message_id=message_id,
            headers=all_headers,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await self._publish(target, routing_key, message, mandatory=mandatory)

    async def consume(self, spec: QueueSpec, handler: DeliveryHandler) -> _AmqpSubscription:
        """Consume `spec` on a channel of its own with `basic.qos(prefetch)`; each delivery runs as a task."""
        connection = self._require(self._connection)
        channel = await connection.channel(publisher_confirms=False)
        self._consumer_channels.append(channel)
        await channel.set_qos(prefetch_count=spec.prefetch or self._settings.prefetch)
        queue = await self._declare(channel, spec)

        async def on_message(incoming: AbstractIncomingMessage) -> None:
            # aiormq runs this callback as a task of the channel and cancels it when the channel
            # closes (a broker restart, a lost connection). A handler half-way through its effect
            # (a sandbox turn: claimed, agent running) must not stop at whatever await it was on:
            # it runs in a task of its own and finishes. Its ack goes with the channel
            # (`_AmqpDelivery._settle`), and the broker delivers the message again (at least once).
            task = asyncio.create_task(_run(handler, _AmqpDelivery(self, spec, incoming)))
            self._handlers.add(task)
            task.add_done_callback(self._handler_done)
            await asyncio.shield(task)

        tag = await queue.consume(on_message, no_ack=False)
        return _AmqpSubscription(self, queue, tag)

    def _handler_done(self, task: asyncio.Task[None]) -> None:
        self._handlers.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("amqp_delivery_handler_failed", error=repr(exc), exc_info=exc)

    async def broadcast(self, topic: str, body: bytes) -> None:
        """Best-effort notification on `<prefix>.broadcast` (transient, not mandatory)."""
        message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT)
        await self._publish(self.broadcast_exchange, topic, message, mandatory=False)

    async def subscribe_broadcast(self, topic_pattern: str, handler: BroadcastHandler) -> _AmqpSubscription:
        """An exclusive auto-delete queue bound to `topic_pattern`; `handler(topic, body)` per message."""
        connection = self._require(self._connection)
        if self._broadcast_channel is None:
            self._broadcast_channel = await connection.channel(publisher_confirms=False)
        channel = self._broadcast_channel
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True, durable=False)
        await queue.bind(self.broadcast_exchange, routing_key=topic_pattern)

        async def on_message(incoming: AbstractIncomingMessage) -> None:
            try:
                await handler(incoming.routing_key or "", incoming.body)
            except Exception:
                log.exception("broadcast_handler_failed", topic=incoming.routing_key)

        tag = await queue.consume(on_message, no_ack=True)
        return _AmqpSubscription(self, queue, tag, delete_on_cancel=True)

    async def subscribe_events(self, routing_pattern: str, handler: BroadcastHandler) -> _AmqpSubscription:
        """An exclusive auto-delete queue bound to the events exchange; `handler(routing_key, body)`."""
        connection = self._require(self._connection)
        if self._broadcast_channel is None:
            self._broadcast_channel = await connection.channel(publisher_confirms=False)
        queue = await self._broadcast_channel.declare_queue(
            "", exclusive=True, auto_delete=True, durable=False
        )
        await queue.bind(self.events_exchange, routing_key=routing_pattern)

        async def on_message(incoming: AbstractIncomingMessage) -> None:
            try:
                await handler(incoming.routing_key or "", incoming.body)
            except Exception:
                log.exception("event_subscription_handler_failed", routing_key=incoming.routing_key)

        tag = await queue.consume(on_message, no_ack=True)
        return _AmqpSubscription(self, queue, tag, delete_on_cancel=True)

    async def close(self) -> None:
        """Close the connection (and with it every channel; unacked deliveries return to their queues)."""
        connection, self._connection = self._connection, None
        self._publisher = self._topology = self._broadcast_channel = None
        self._consumer_channels.clear()
        self._lost = ""
        if connection is not None:
            # A broker that stopped answering must not hold the exit.
            await self.bounded(connection.close(), "connection.close")

    async def bounded(self, call: Awaitable[Any], what: str) -> None:
        """Await a call the broker must answer on the way out, at most CLOSE_TIMEOUT_SECONDS, and not at
        all once an earlier one went unanswered (the call is then dropped, logged). Errors are swallowed:
        whatever the broker does, a stop goes on."""
        if self._unanswered:
            if asyncio.iscoroutine(call):
                call.close()  # never started: nothing is sent
            log.info("amqp_call_skipped", call=what, reason="broker did not answer an earlier call")
            return
        try:
            await asyncio.wait_for(call, CLOSE_TIMEOUT_SECONDS)
        except TimeoutError:
            self._unanswered = True
            log.warning("amqp_broker_not_answering", call=what, waited_seconds=CLOSE_TIMEOUT_SECONDS)
        except Exception as exc:
            log.info("amqp_call_failed", call=what, error=repr(exc))

    # -- internals ---------------------------------------------------------------------------------

    @staticmethod
    def _require(value: Any) -> Any:
        if value is None:
            raise Unavailable("AMQP broker is not connected", reason="AMQP_UNAVAILABLE")
        return value

    async def _open_publisher(self) -> AbstractChannel:
        connection = self._require(self._connection)
        channel: AbstractChannel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        return channel

    def ladder(self, spec: QueueSpec) -> tuple[float, ...]:
        """The distinct retry delays of `spec`, ascending (one retry queue each)."""
        s = self._settings
        steps = retry_ladder(
            spec,
            max_attempts=spec.max_attempts or s.max_attempts,
            base_delay=s.retry_delay_seconds,
            max_delay=s.retry_delay_max_seconds,
        )
        return tuple(sorted(set(steps)))

    def retry_queue_for(self, spec: QueueSpec, delay_seconds: float) -> str:
        """Name of the retry queue whose delay is the smallest one >= `delay_seconds` (else the longest)."""
        ladder = self.ladder(spec)
        index = next((i for i, d in enumerate(ladder) if d >= delay_seconds - 1e-9), len(ladder) - 1)
        return f"{spec.name}.retry.{index + 1}"

    def _queue_arguments(self, extra: Mapping[str, Any]) -> dict[str, Any]:
        args: dict[str, Any] = {"x-queue-type": self._settings.queue_type, **extra}
        return args

    async def _declare(self, channel: AbstractChannel, spec: QueueSpec) -> AbstractQueue:
        dlq = await channel.declare_queue(
            f"{spec.name}.dlq", durable=True, arguments=self._queue_arguments({})
        )
        if spec.name not in self._declared:
            await dlq.bind(self.dlx_exchange, routing_key=spec.name)
            for n, delay in enumerate(self.ladder(spec), start=1):
                await channel.declare_queue(
                    f"{spec.name}.retry.{n}",
                    durable=True,
                    arguments=self._queue_arguments(
                        {
                            "x-message-ttl": int(delay * 1000),
                            "x-dead-letter-exchange": "",
                            "x-dead-letter-routing-key": spec.name,
                        }
                    ),
                )
        work_args: dict[str, Any] = {
            "x-dead-letter-exchange": self.dlx_exchange,
            "x-dead-letter-routing-key": spec.name,
        }
        if self._settings.queue_type == "quorum":
            work_args["x-delivery-limit"] = POISON_DELIVERY_LIMIT
        queue = await channel.declare_queue(
            spec.name, durable=True, arguments=self._queue_arguments(work_args)
        )
        if spec.name not in self._declared:
            for pattern in spec.bindings:
                await queue.bind(self.events_exchange, routing_key=pattern)
            self._declared.add(spec.name)
        return queue

    async def _publish(
        self, exchange: str, routing_key: str, message: aio_pika.Message, *, mandatory: bool
    ) -> None:
        timeout = self._settings.confirm_timeout_seconds
        channel = self._require(self._publisher)
        try:
            target: AbstractExchange = (
                channel.default_exchange
                if exchange == ""
                else await channel.get_exchange(exchange, ensure=False)
            )
            await target.publish(message, routing_key=routing_key, mandatory=mandatory, timeout=timeout)
        except aio_pika.exceptions.PublishError as exc:
            raise Unavailable(
                f"unroutable message to {exchange or 'default exchange'}/{routing_key}", reason="UNROUTABLE"
            ) from exc
        except TimeoutError as exc:
            await self._reset_publisher(channel)
            raise Unavailable(f"no publisher confirm within {timeout}s", reason="CONFIRM_TIMEOUT") from exc
        except _PUBLISH_ERRORS as exc:
            raise Unavailable(f"publish failed: {exc!r}", reason="AMQP_UNAVAILABLE") from exc

    async def _reset_publisher(self, failed: AbstractChannel) -> None:
        """A timed-out confirm leaves the channel in an unknown state: replace it (aio-pika#671)."""
        async with self._publisher_lock:
            if self._publisher is not failed:
                return
            with contextlib.suppress(Exception):
                await failed.close()
            try:
                self._publisher = await self._open_publisher()
            except _PUBLISH_ERRORS:
                log.warning("amqp_publisher_reopen_failed")

    async def publish_raw(self, exchange: str, routing_key: str, message: aio_pika.Message) -> None:
        """Publish to an internal exchange (retry/DLQ plumbing), mandatory, with confirm."""
        await self._publish(exchange, routing_key, message, mandatory=True)

    def public_exchange_name(self, exchange: str | None) -> str:
        """Map `<prefix>.events` back to the protocol's "events" (and anything else to "")."""
        return "events" if exchange == self.events_exchange else ""


async def _run(handler: DeliveryHandler, delivery: _AmqpDelivery) -> None:
    await handler(delivery)


class _AmqpSubscription:
    def __init__(
        self, broker: AmqpBroker, queue: AbstractQueue, tag: str, *, delete_on_cancel: bool = False
    ) -> None:
        self._broker = broker
        self._queue = queue
        self._tag = tag
        self._delete = delete_on_cancel
        self._cancelled = False

    async def cancel(self) -> None:
        """basic.cancel (then queue.delete for a private queue), bounded (`AmqpBroker.bounded`);
        deliveries already handed over still settle on the channel."""
        if self._cancelled:
            return
        self._cancelled = True
        await self._broker.bounded(self._cancel(), f"basic.cancel {self._queue.name}")

    async def _cancel(self) -> None:
        await self._queue.cancel(self._tag)
        if self._delete:
            await self._queue.delete(if_unused=False, if_empty=False)


class _AmqpDelivery:
    def __init__(self, broker: AmqpBroker, spec: QueueSpec, incoming: AbstractIncomingMessage) -> None:
        self._broker = broker
        self._spec = spec
        self._incoming = incoming
        headers = dict(incoming.headers or {})
        attempt = headers.get(ATTEMPT, 1)
        self.message = Message(
            message_id=incoming.message_id or "",
            body=incoming.body,
            headers=headers,
            routing_key=str(headers.get(ORIGINAL_ROUTING_KEY) or incoming.routing_key or ""),
            exchange=str(headers.get(ORIGINAL_EXCHANGE, broker.public_exchange_name(incoming.exchange))),
            attempt=int(attempt) if isinstance(attempt, int | str) and str(attempt).isdigit() else 1,
            redelivered=bool(incoming.redelivered),
        )

    def _copy(self, headers: Mapping[str, Any]) -> aio_pika.Message:
        m = self.message
        return aio_pika.Message(
            m.body,
            message_id=m.message_id,
            headers={
                ORIGINAL_EXCHANGE: m.exchange,
                ORIGINAL_ROUTING_KEY: m.routing_key,
                **m.headers,
                **headers,
            },
            content_type=self._incoming.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )

    async def _settle(self, what: str, call: Callable[[], Awaitable[None]]) -> None:
        """Settle on the delivery's channel; if that channel closed meanwhile (the handler outlived a
        broker restart, see `AmqpBroker.consume`), the broker has put the message back already and
        delivers it again: say so instead of raising."""
        try:
            await call()
        except _PUBLISH_ERRORS as exc:
            log.warning(
                "amqp_settle_lost",
                settle=what,
                queue=self._spec.name,
                message_id=self.message.message_id,
                error=repr(exc),
                outcome="the channel closed: the broker delivers the message again",
            )

    async def ack(self) -> None:
        await self._settle("ack", self._incoming.ack)

    async def retry(self, delay_seconds: float) -> None:
        """Copy to the matching retry queue (confirmed), then ack; on failure requeue so nothing is lost."""
        queue = self._broker.retry_queue_for(self._spec, delay_seconds)
        try:
            await self._broker.publish_raw("", queue, self._copy({ATTEMPT: self.message.attempt + 1}))
        except Unavailable:
            log.warning("amqp_retry_publish_failed", queue=queue, message_id=self.message.message_id)
            await self.requeue()
            return
        await self.ack()

    async def dead_letter(self, reason: str) -> None:
        """Copy to `<queue>.dlq` with the reason (confirmed), then ack; on failure reject to the DLX."""
        try:
            await self._broker.publish_raw(
                self._broker.dlx_exchange, self._spec.name, self._copy({DEAD_LETTER_REASON: reason[:1000]})
            )
        except Unavailable:
            await self._settle("reject", lambda: self._incoming.reject(requeue=False))
            return
        await self.ack()

    async def requeue(self) -> None:
        await self._settle("requeue", lambda: self._incoming.nack(requeue=True))
