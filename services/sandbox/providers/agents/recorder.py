"""`SessionRecorder`: turns the ACP messages of one agent session into ordered event-log appends.

ACP delivers `session/update` notifications to handler tasks that may interleave, so events are not
taken from the handlers: the connection's observer sees every incoming message in wire order and
`put()`s it here synchronously. A single writer task appends queued events in batches (one
transaction per batch), so the log order is the wire order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from services.platform.aio import cancel_and_log
from services.platform.logging import get_logger
from services.sandbox.domain.models import EventKind, EventSender, NewEvent, SessionKey

log = get_logger(__name__)

Append = Callable[[SessionKey, str, Sequence[NewEvent]], Awaitable[Any]]
_KINDS = {k.value for k in EventKind}
_TEXT_KINDS = {EventKind.AGENT_MESSAGE_CHUNK, EventKind.AGENT_THOUGHT_CHUNK, EventKind.USER_MESSAGE_CHUNK}
_BATCH = 200
_RETRIES = 5


def event_from_update(update: dict[str, Any]) -> NewEvent:
    """An ACP `session/update` `update` object → the log event (payload kept verbatim)."""
    kind_name = str(update.get("sessionUpdate", ""))
    kind = EventKind(kind_name) if kind_name in _KINDS else EventKind.OTHER
    text = ""
    if kind in _TEXT_KINDS:
        content = update.get("content")
        if isinstance(content, dict) and content.get("type") == "text":
            text = str(content.get("text", ""))
    return NewEvent(kind, EventSender.AGENT, text, update)


class SessionRecorder:
    """Buffers one session's events and appends them in order.

    Args:
        key: the agent session.
        append: writes a batch (`LogRecords.append_events`).

    `turn_id` is stamped on each event when it is put, so events keep the turn they arrived in.
    """

    def __init__(self, key: SessionKey, append: Append) -> None:
        self.key = key
        self.turn_id = ""
        self._append = append
        self._queue: asyncio.Queue[tuple[str, NewEvent]] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_loop(), name=f"recorder-{key.session_id}")

    def put(self, event: NewEvent) -> None:
        """Queue `event` for the current turn (sync; called from the connection's observer)."""
        self._queue.put_nowait((self.turn_id, event))

    async def flush(self) -> None:
        """Wait until every event put so far is written."""
        await self._queue.join()

    async def close(self) -> None:
        """Write what is queued (bounded wait), then stop the writer."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), 10)
        # Bounded: the writer awaits the database, where a swallowed cancel must not hang a stop.
        await cancel_and_log([self._writer], log, "session_recorder_ignored_cancel", session=self.key.name)

    async def _write_loop(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < _BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                start = 0
                for i in range(1, len(batch) + 1):  # one append per run of events of the same turn
                    if i == len(batch) or batch[i][0] != batch[start][0]:
                        await self._append_retrying(batch[start][0], [e for _, e in batch[start:i]])
                        start = i
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _append_retrying(self, turn_id: str, events: list[NewEvent]) -> None:
        for attempt in range(1, _RETRIES + 1):
            try:
                await self._append(self.key, turn_id, events)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning(
                    "session_events_append_failed", session=self.key.name, attempt=attempt, exc_info=True
                )
                await asyncio.sleep(0.2 * attempt)
        log.error("session_events_dropped", session=self.key.name, count=len(events))
