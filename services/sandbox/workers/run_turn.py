"""Handler of `<prefix>.sandbox.turn` (RunTurn): run the session's queued turns while holding its claim.

Idempotent without the inbox: turn states and the session claim decide what runs, so a redelivered
or duplicate message finds the turn ended (or the claim taken) and does nothing.
"""

from __future__ import annotations

from foundry.sandbox.v1 import events_pb2

from services.platform.messaging.broker import Message
from services.platform.messaging.consumer import Handler, HandlerContext
from services.sandbox.domain import names
from services.sandbox.usecases.turns import TurnRunner


def handler(runner: TurnRunner) -> Handler:
    async def handle(message: Message, ctx: HandlerContext) -> None:
        work = events_pb2.RunTurn.FromString(message.body)
        key, _ = names.turn(work.name)
        await runner.run_session(key)

    return handle
