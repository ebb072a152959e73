"""Small asyncio helpers the whole mesh shares.

Why not `asyncio.wait_for(event.wait(), t)`: on Python 3.11 it runs the wait in an inner task, and a
cancellation that arrives just as the event fires is swallowed (CPython gh-86296, fixed in 3.12).
A stream or worker loop then ignores its cancel and runs forever. `asyncio.timeout` awaits in the
caller's own task, so a cancel always raises.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable
from typing import Any, Protocol


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until `event` is set or `timeout` seconds pass. Returns True if the event is set."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(max(timeout, 0.0)):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


@contextlib.asynccontextmanager
async def periodically(
    seconds: float, beat: Callable[[], Awaitable[bool | None]], *, name: str
) -> AsyncIterator[None]:
    """Run `await beat()` every `seconds` while the block runs (a lease renewal, a liveness stamp).
    A beat returning False ends the beats early; an exception it raises propagates at the block's end.

    Stopped between two beats, never inside one: a beat is a database write, and a cancel landing in
    its commit leaves SQLAlchemy resetting the pooled connection under the cancel (logged as an error,
    the connection discarded). Leaving the block waits for a beat in flight; a second cancel
    meanwhile (`cancel_and_wait`) cancels the beat too."""
    stop = asyncio.Event()

    async def beats() -> None:
        while not await wait_event(stop, seconds):
            if await beat() is False:
                return

    task = asyncio.create_task(beats(), name=name)
    try:
        yield
    finally:
        stop.set()
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            task.cancel()
            raise


FIRST_RECANCEL = 2.0  # seconds a cancelled task has to end before it is cancelled again


async def cancel_and_wait(
    tasks: Collection[asyncio.Task[Any]], *, patience: float = 10.0
) -> list[asyncio.Task[Any]]:
    """Cancel `tasks` and wait until they end, cancelling again those still running after
    FIRST_RECANCEL seconds and then every second: a cancellation swallowed once (by
    `asyncio.wait_for` on 3.11, above, or any library that catches it) must not hang a shutdown,
    while a cleanup that needs a moment after its cancel (killing and reaping a process) is not cut
    short. Returns the tasks still running after `patience` seconds, for the caller to log. Their
    outcomes are retrieved (no "exception was never retrieved")."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    pending = {task for task in tasks if not task.done()}
    interval = FIRST_RECANCEL
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(interval, left))
        interval = 1.0
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()
    return list(pending)


class _ErrorLog(Protocol):
    def error(self, event: str, **fields: Any) -> Any: ...


async def cancel_and_log(
    tasks: Collection[asyncio.Task[Any]],
    log: _ErrorLog,
    event: str,
    *,
    patience: float = 10.0,
    **fields: Any,
) -> list[asyncio.Task[Any]]:
    """`cancel_and_wait(tasks, patience=patience)`, then, if any task ignored its cancel, log `event`
    at error level with `fields` and `tasks` (where each one still running waits). The shutdown
    paths' one call: a stop goes on after it either way. Returns the tasks still running."""
    stuck = await cancel_and_wait(tasks, patience=patience)
    if stuck:
        log.error(event, **fields, tasks=where_tasks_wait(stuck))
    return stuck


def where_tasks_wait(tasks: Iterable[asyncio.Task[Any]]) -> dict[str, str]:
    """Task name → where it waits, `file:line in function`, for logging what `cancel_and_wait`
    returns. asyncio gives only a suspended task's own coroutine frame (not the frames it awaits)."""
    return {
        task.get_name(): " <- ".join(
            f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
            for frame in reversed(task.get_stack(limit=4))
        )
        for task in tasks
    }
