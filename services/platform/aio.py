"""Small asyncio helpers the whole mesh shares.

Why not `asyncio.wait_for(event.wait(), t)`: on Python 3.11 it runs the wait in an inner task, and a
cancellation that arrives just as the event fires is swallowed (CPython gh-86296, fixed in 3.12).
A stream or worker loop then ignores its cancel and runs forever. `asyncio.timeout` awaits in the
caller's own task, so a cancel always raises.
"""

from __future__ import annotations

import asyncio


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
