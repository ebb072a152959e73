"""Outbox relay: publishes committed outbox rows in id order, with publisher confirms.

Each pass takes batches of pending rows inside a transaction; on PostgreSQL the batch is selected
`FOR UPDATE SKIP LOCKED`, so several replicas relay side by side and a row is published by at most
one of them at a time (a row stays locked until its publish is confirmed and marked). A published
row is deleted, or kept `retention_seconds` for inspection. A row whose publish fails stays pending
(attempts and last_error recorded) and is retried on a later pass: delivery is at least once.

On SQLite (one process, one relay per database) the batch is read in a read-only snapshot and
only the marking of published rows takes the write lock: publishing does not wait behind the
service's other writers, which is most of an event's latency on a busy embedded mesh.

The relay wakes when a transaction that wrote to the outbox commits (`wake()`), and sweeps every
`outbox_sweep_seconds` anyway for rows left by a process that crashed before waking its relay.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from prometheus_client import Counter
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.platform import clock
from services.platform.aio import wait_event
from services.platform.db.engine import Database
from services.platform.db.tables import outbox
from services.platform.errors import Unavailable
from services.platform.logging import get_logger
from services.platform.messaging.broker import Broker
from services.platform.settings import MessagingSettings

log = get_logger(__name__)

RELAYED = Counter("foundry_outbox_relayed_total", "Outbox rows relayed", ["relay", "outcome"])
_MAX_BACKOFF_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class RelayPass:
    """Result of one `relay_pending()` pass: rows published and rows whose publish failed."""

    published: int
    failed: int


class OutboxRelay:
    """Moves committed outbox rows of one Database to the broker.

    Args:
        db: the service's Database (its `outbox` table).
        broker: where rows are published (`exchange` "" = work queue, "events" = topic exchange).
        settings: `outbox_sweep_seconds` (safety sweep period).
        name: label for logs and metrics (e.g. the service name).
        batch_size: rows per transaction.
        retention_seconds: 0 deletes a row once published; > 0 keeps it that long (marked published).
    """

    def __init__(
        self,
        db: Database,
        broker: Broker,
        settings: MessagingSettings,
        *,
        name: str = "outbox",
        batch_size: int = 100,
        retention_seconds: float = 0.0,
    ) -> None:
        self._db = db
        self._broker = broker
        self._settings = settings
        self._name = name
        self._batch_size = batch_size
        self._retention = retention_seconds
        self._wake = asyncio.Event()
        self._stopping = False
        self._running: asyncio.Task[Any] | None = None

    def wake(self) -> None:
        """Ask for a pass now (called after a commit that wrote outbox rows). Sync and cheap."""
        self._wake.set()

    async def run(self) -> None:
        """Relay until `stop()`: a pass on every wake-up, and at least every `outbox_sweep_seconds`."""
        self._stopping = False
        self._running = asyncio.current_task()
        failures = 0
        try:
            while not self._stopping:
                self._wake.clear()  # commits during the pass wake the next one
                try:
                    result = await self.relay_pending()
                    if self._retention > 0:
                        await self.prune()
                    failures = failures + 1 if result.failed else 0
                except Exception:
                    log.exception("outbox_relay_pass_failed", relay=self._name)
                    failures += 1
                timeout = self._settings.outbox_sweep_seconds
                if failures:
                    timeout = min(timeout, _MAX_BACKOFF_SECONDS, 0.1 * 2 ** min(failures, 10))
                await wait_event(self._wake, timeout)
        finally:
            self._running = None

    async def stop(self) -> None:
        """Finish the pass in progress and make `run()` return (waits for it when it runs in a task)."""
        self._stopping = True
        self._wake.set()
        task = self._running
        if task is not None and task is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)

    async def relay_pending(self) -> RelayPass:
        """Publish every pending row once (id order); failed rows wait for a later pass."""
        published = failed = 0
        after = 0
        while True:
            if self._db.is_sqlite:
                async with self._db.snapshot() as session:
                    rows = await self._claim_batch(session, after)
                if not rows:
                    break
                results = await self._publish(rows)
                async with self._db.transaction() as session:
                    ok, bad = await self._record(session, rows, results)
            else:
                async with self._db.transaction() as session:
                    rows = await self._claim_batch(session, after)
                    if not rows:
                        break
                    ok, bad = await self._record(session, rows, await self._publish(rows))
            published += ok
            failed += bad
            after = rows[-1].id
            if len(rows) < self._batch_size:
                break
        return RelayPass(published, failed)

    async def prune(self) -> int:
        """Delete published rows older than the retention; returns how many."""
        cutoff = clock.now() - timedelta(seconds=self._retention)
        async with self._db.transaction() as session:
            result = await session.execute(
                delete(outbox).where(outbox.c.published_at.is_not(None), outbox.c.published_at < cutoff)
            )
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def _claim_batch(self, session: AsyncSession, after: int) -> list[Any]:
        stmt = (
            select(outbox)
            .where(outbox.c.published_at.is_(None), outbox.c.id > after)
            .order_by(outbox.c.id)
            .limit(self._batch_size)
        )
        if not self._db.is_sqlite:  # on SQLite this relay is the database's only one
            stmt = stmt.with_for_update(skip_locked=True)
        return list((await session.execute(stmt)).all())

    async def _publish(self, rows: list[Any]) -> list[BaseException | None]:
        # Publishes are pipelined on one channel (aiormq keeps their order) and confirmed together.
        return await asyncio.gather(
            *(
                self._broker.publish(
                    exchange=row.exchange,
                    routing_key=row.routing_key,
                    body=row.body,
                    message_id=row.message_id,
                    headers=dict(row.headers or {}),
                )
                for row in rows
            ),
            return_exceptions=True,
        )

    async def _record(
        self, session: AsyncSession, rows: list[Any], results: list[BaseException | None]
    ) -> tuple[int, int]:
        """Delete (or mark) the published rows and count a failed attempt on the others."""
        done = [row.id for row, result in zip(rows, results, strict=True) if result is None]
        now = clock.now()
        if done:
            if self._retention > 0:
                await session.execute(update(outbox).where(outbox.c.id.in_(done)).values(published_at=now))
            else:
                await session.execute(delete(outbox).where(outbox.c.id.in_(done)))
        bad = 0
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Unavailable | ValueError):
                    raise result
                bad += 1
                log.warning(
                    "outbox_publish_failed", relay=self._name, message_id=row.message_id, error=str(result)
                )
                await session.execute(
                    update(outbox)
                    .where(outbox.c.id == row.id)
                    .values(attempts=outbox.c.attempts + 1, last_error=str(result)[:2000])
                )
        RELAYED.labels(self._name, "published").inc(len(done))
        if bad:
            RELAYED.labels(self._name, "failed").inc(bad)
        return len(done), bad
