"""A consumer process for `tests/e2e/test_outbox_cross_process.py`.

It consumes counter events with the platform `Worker` and applies each one in an inbox transaction
(`counters.times += 1` per message id). With `E2E_KILL_AFTER_COMMITS=k` it SIGKILLs itself right
after the k-th commit, before the Worker can ack: the delivery is left for the next consumer.

Configuration: FOUNDRY_DATABASE_URL, FOUNDRY_AMQP_URL, FOUNDRY_NAME_PREFIX (Settings), E2E_SCHEMA.
Prints one JSON line per applied message (`{"event": "applied", "message_id": ...}`) and the
Worker's JSON logs; exits 0 after SIGTERM once drained.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from services.platform.db import Database
from services.platform.logging import configure
from services.platform.messaging import AmqpBroker, HandlerContext, Message, QueueSpec, Worker
from services.platform.settings import Settings

counters_metadata = sa.MetaData()
counters = sa.Table(
    "counters",
    counters_metadata,
    sa.Column("message_id", sa.String(64), primary_key=True),
    sa.Column("times", sa.Integer, nullable=False),
)


def counter_spec(prefix: str) -> QueueSpec:
    """The consumer's queue: counter events from the events exchange."""
    return QueueSpec(f"{prefix}.organization.counters", bindings=("e2e.counter.*",), prefetch=4)


async def main() -> None:
    settings = Settings()
    assert settings.database_url and settings.amqp_url, "needs FOUNDRY_DATABASE_URL and FOUNDRY_AMQP_URL"
    kill_after = int(os.environ.get("E2E_KILL_AFTER_COMMITS", "0"))
    configure("INFO", "json")
    db = Database(settings.database_url, schema=os.environ["E2E_SCHEMA"])
    broker = AmqpBroker(settings.amqp_url, prefix=settings.name_prefix, settings=settings.messaging)
    await broker.connect()
    worker = Worker(broker, service="organization", settings=settings.messaging, database=db)
    committed = 0

    async def apply(message: Message, ctx: HandlerContext) -> None:
        nonlocal committed
        async with ctx.transaction() as session:
            stmt = insert(counters).values(message_id=message.message_id, times=1)
            await session.execute(
                stmt.on_conflict_do_update(
                    index_elements=["message_id"], set_={"times": counters.c.times + 1}
                )
            )
        committed += 1
        print(json.dumps({"event": "applied", "message_id": message.message_id}), flush=True)
        if committed == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # committed, not acked: the crash the test is about

    worker.register(counter_spec(settings.name_prefix), apply)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await worker.start()
    print(json.dumps({"event": "ready"}), flush=True)
    await stop.wait()
    await worker.stop(5.0)
    await broker.close()
    await db.dispose()


if __name__ == "__main__":
    asyncio.run(main())
