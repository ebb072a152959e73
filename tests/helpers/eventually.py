from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast, overload

T = TypeVar("T")


@overload
async def assert_eventually(
    check: Callable[[], Awaitable[T]], *, timeout: float = 10.0, interval: float = 0.02
) -> T: ...


@overload
async def assert_eventually(
    check: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.02
) -> T: ...


async def assert_eventually(
    check: Callable[[], Awaitable[T]] | Callable[[], T], *, timeout: float = 10.0, interval: float = 0.02
) -> T:
    """Call `check` until it stops raising AssertionError or ValueError (returns its result) or
    `timeout` passes, then raise what it raised last. ValueError too: a check that unpacks what has
    not arrived yet (`[event] = log.of(kind)` before the outbox relay published it) raises it, and
    must be asked again rather than fail at once (a CI run failed so)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
                return cast(T, await result)
            return result
        except (AssertionError, ValueError):
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(interval)
