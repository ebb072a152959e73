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
    """Call `check` until it stops raising AssertionError (returns its result) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
                return cast(T, await result)
            return result
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(interval)
