"""Outbox writer: messages become rows of the `outbox` table in the caller's transaction.

A message is published if and only if the transaction that announced it commits: the relay reads
committed rows only. After the commit the relay is woken (`notify`), so the usual latency is one
publish; a crashed process's rows are picked up by the relay's safety sweep.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf.message import Message as ProtoMessage
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.platform import clock
from services.platform.context import request_id
from services.platform.db.engine import after_commit, defer_insert
from services.platform.db.tables import outbox
from services.platform.messaging.broker import ENQUEUED_AT, MESSAGE_TYPE, REQUEST_ID

Body = ProtoMessage | bytes
_INSERT = insert(outbox)  # built once; each row's values are its parameters


class Outbox:
    """Writes work messages and events into the outbox table.

    Args:
        notify: called (sync) after each transaction that wrote a row commits; pass `OutboxRelay.wake`.
    """

    def __init__(self, notify: Callable[[], object] | None = None) -> None:
        self._notify = notify

    async def enqueue(
        self,
        session: AsyncSession,
        *,
        queue: str,
        message: Body,
        message_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """Send `message` to work queue `queue` (its full name) once the session commits.

        Returns the message id (a new uuid4 hex unless given; the consumer's inbox dedups on it).
        """
        return await self._write(session, "", queue, message, message_id, headers)

    async def publish(
        self,
        session: AsyncSession,
        *,
        routing_key: str,
        message: Body,
        message_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """Publish event `message` on the events exchange with `routing_key` once the session commits."""
        return await self._write(session, "events", routing_key, message, message_id, headers)

    async def _write(
        self,
        session: AsyncSession,
        exchange: str,
        routing_key: str,
        message: Body,
        message_id: str | None,
        headers: Mapping[str, Any] | None,
    ) -> str:
        row_headers: dict[str, Any] = dict(headers or {})
        if isinstance(message, ProtoMessage):
            row_headers.setdefault(MESSAGE_TYPE, message.DESCRIPTOR.full_name)
            body = message.SerializeToString(deterministic=True)
        else:
            body = bytes(message)
        rid = request_id()  # the relay runs outside this request: capture the correlation id now
        if rid:
            row_headers.setdefault(REQUEST_ID, rid)
        created = clock.now()
        # latency counts the outbox wait too
        row_headers.setdefault(ENQUEUED_AT, round(created.timestamp() * 1000))
        mid = message_id or uuid.uuid4().hex
        await defer_insert(
            session,
            _INSERT,
            {
                "message_id": mid,
                "exchange": exchange,
                "routing_key": routing_key,
                "body": body,
                "headers": row_headers,
                "created_at": created,
                "attempts": 0,
            },
        )
        if self._notify is not None and not session.info.get("foundry_outbox_notify"):
            session.info["foundry_outbox_notify"] = True  # one wake-up per transaction
            after_commit(session, self._notify)
        return mid
