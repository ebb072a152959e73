"""Messaging: the `Broker` protocol, its RabbitMQ and in-process transports, and the queue `Worker`.

from services.platform.messaging import AmqpBroker, MemoryBroker, QueueSpec, Worker
"""

from services.platform.messaging.amqp import AmqpBroker
from services.platform.messaging.broker import (
    ATTEMPT,
    ENQUEUED_AT,
    MESSAGE_TYPE,
    REQUEST_ID,
    BroadcastHandler,
    Broker,
    Delivery,
    DeliveryHandler,
    Message,
    QueueSpec,
    Subscription,
)
from services.platform.messaging.consumer import Handler, HandlerContext, Worker
from services.platform.messaging.memory import MemoryBroker

__all__ = [
    "ATTEMPT",
    "ENQUEUED_AT",
    "MESSAGE_TYPE",
    "REQUEST_ID",
    "AmqpBroker",
    "BroadcastHandler",
    "Broker",
    "Delivery",
    "DeliveryHandler",
    "Handler",
    "HandlerContext",
    "MemoryBroker",
    "Message",
    "QueueSpec",
    "Subscription",
    "Worker",
]
