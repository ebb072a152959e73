"""Issue 2, "Done when": an event written through the outbox in one process is applied by a consumer
in another process exactly once in effect, even when that consumer is SIGKILLed after its commit and
before its ack (the redelivery goes to a second consumer process, which finds the inbox row)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from services.platform.db import Database, platform_metadata
from services.platform.messaging import AmqpBroker
from services.platform.outbox import Outbox, OutboxRelay
from services.platform.settings import MessagingSettings
from tests.e2e.procs.outbox_consumer import counter_spec, counters, counters_metadata
from tests.helpers import assert_eventually, unique_name

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 20
KILL_AFTER = 5


@pytest.fixture(name="schema")
def _schema() -> str:
    return unique_name("e2e_outbox")


@pytest.fixture(name="db")
async def _db(pg_url: str, schema: str) -> AsyncIterator[Database]:
    db = Database(pg_url, schema=schema)
    await db.ensure_schema()
    async with db.engine.begin() as conn:
        await conn.run_sync(platform_metadata.create_all)
        await conn.run_sync(counters_metadata.create_all)
    yield db
    await db.dispose()


class ConsumerProcess:
    """`python -m tests.e2e.procs.outbox_consumer` with its stdout in a file (JSON lines)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.e2e.procs.outbox_consumer",
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )

    def lines(self) -> list[dict[str, object]]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def events(self, name: str) -> list[dict[str, object]]:
        return [line for line in self.lines() if line.get("event") == name]

    async def exit_code(self, within: float) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), within)

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()


async def counter_rows(db: Database) -> dict[str, int]:
    async with db.snapshot() as s:
        return {row.message_id: row.times for row in (await s.execute(sa.select(counters))).all()}


async def test_outbox_event_is_applied_once_in_another_process_even_if_it_dies_before_ack(
    db: Database, pg_url: str, amqp_url: str, schema: str, tmp_path: Path
) -> None:
    prefix = unique_name("e2e")
    # Production queues (quorum) on both sides: the consumer process reads the same choice from its env.
    settings = MessagingSettings(outbox_sweep_seconds=1.0, queue_type="quorum")
    broker = AmqpBroker(amqp_url, prefix=prefix, settings=settings)
    await broker.connect()
    await broker.declare_queue(counter_spec(prefix))  # the subscription exists before events flow
    relay = OutboxRelay(db, broker, settings, name="producer")
    relay_task = asyncio.create_task(relay.run())
    env = {
        **os.environ,
        "FOUNDRY_DATABASE_URL": pg_url,
        "FOUNDRY_AMQP_URL": amqp_url,
        "FOUNDRY_NAME_PREFIX": prefix,
        "FOUNDRY_MESSAGING__QUEUE_TYPE": settings.queue_type,
        "E2E_SCHEMA": schema,
    }
    doomed = ConsumerProcess({**env, "E2E_KILL_AFTER_COMMITS": str(KILL_AFTER)}, tmp_path / "doomed.log")
    successor = ConsumerProcess(env, tmp_path / "successor.log")
    try:
        writer = Outbox(notify=relay.wake)
        sent = []
        for i in range(EVENTS):
            async with db.transaction() as s:
                sent.append(
                    await writer.publish(s, routing_key="e2e.counter.incremented", message=f"{i}".encode())
                )

        await doomed.start()
        assert await doomed.exit_code(within=60) == -signal.SIGKILL
        applied_before_kill = [str(e["message_id"]) for e in doomed.events("applied")]
        assert len(applied_before_kill) == KILL_AFTER
        killed_while_holding = applied_before_kill[-1]  # committed, never acked

        await successor.start()

        async def all_applied() -> dict[str, int]:
            rows = await counter_rows(db)
            assert sorted(rows) == sorted(sent)
            return rows

        rows = await assert_eventually(all_applied, timeout=60)
        assert rows == dict.fromkeys(sent, 1), "every event's effect happened exactly once"
        skipped = await assert_eventually(lambda: _nonempty(successor.events("message_duplicate_skipped")))
        assert killed_while_holding in {e["message_id"] for e in skipped}, "the unacked delivery came back"
        assert successor.proc is not None
        successor.proc.send_signal(signal.SIGTERM)
        assert await successor.exit_code(within=30) == 0
    finally:
        doomed.kill()
        successor.kill()
        await relay.stop()
        await relay_task
        await broker.close()


def _nonempty(items: list[dict[str, object]]) -> list[dict[str, object]]:
    assert items
    return items
