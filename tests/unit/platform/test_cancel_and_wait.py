"""`cancel_and_wait`: a shutdown's cancel of background tasks ends them even when one swallows a
cancellation (as CI once saw the sandbox service's outbox relay do: `close()` then waited forever)."""

from __future__ import annotations

import asyncio
from typing import Any

from services.platform.aio import cancel_and_log, cancel_and_wait, where_tasks_wait


async def _swallows(times: list[int], swallowed: list[int]) -> None:
    """Sleeps; catches the first `times[0]` cancellations and goes on sleeping."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if len(swallowed) >= times[0]:
                raise
            swallowed.append(1)


async def _fails() -> None:
    raise ValueError("a background task that failed before the shutdown")


async def test_a_task_that_swallows_a_cancel_is_cancelled_again_and_ends() -> None:
    swallowed: list[int] = []
    stubborn = asyncio.create_task(_swallows([2], swallowed))
    plain = asyncio.create_task(asyncio.sleep(3600))
    failed = asyncio.create_task(_fails())
    await asyncio.sleep(0)
    stuck = await asyncio.wait_for(cancel_and_wait([stubborn, plain, failed], patience=10), 5)
    assert stuck == []
    assert stubborn.cancelled() and plain.cancelled() and len(swallowed) == 2
    assert isinstance(failed.exception(), ValueError)


async def test_a_task_that_never_ends_is_returned_after_the_patience() -> None:
    swallowed: list[int] = []
    times = [1_000_000]
    forever = asyncio.create_task(_swallows(times, swallowed))
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await cancel_and_wait([forever], patience=0.5) == [forever]
    assert 0.5 <= loop.time() - started < 3 and not forever.done() and swallowed
    times[0] = 0  # now it gives in
    forever.cancel()
    await asyncio.gather(forever, return_exceptions=True)
    assert forever.cancelled()


async def test_where_tasks_wait_names_each_task_and_the_line_it_waits_on() -> None:
    swallowed: list[int] = []
    times = [1_000_000]
    forever = asyncio.create_task(_swallows(times, swallowed), name="stubborn")
    await asyncio.sleep(0)
    stuck = await cancel_and_wait([forever], patience=0.1)
    where = where_tasks_wait(stuck)
    assert list(where) == ["stubborn"]
    assert where["stubborn"].startswith(__file__) and where["stubborn"].endswith(" in _swallows")
    times[0] = 0
    forever.cancel()
    await asyncio.gather(forever, return_exceptions=True)


async def test_a_cleanup_that_needs_a_moment_after_its_cancel_is_not_cut_short() -> None:
    """A task that, once cancelled, spends 1.5 s cleaning up (as killing and reaping a process does)
    finishes that cleanup: it is cancelled again only after FIRST_RECANCEL (2) seconds."""
    cleaned: list[str] = []

    async def reaps() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(1.5)  # a second cancel here would skip the line below
            cleaned.append("reaped")

    task = asyncio.create_task(reaps())
    await asyncio.sleep(0)
    assert await cancel_and_wait([task], patience=10) == []
    assert cleaned == ["reaped"] and task.cancelled()


class _Errors:
    def __init__(self) -> None:
        self.logged: list[tuple[str, dict[str, Any]]] = []

    def error(self, event: str, **fields: Any) -> None:
        self.logged.append((event, fields))


async def test_cancel_and_log_logs_only_the_tasks_that_ignored_their_cancel() -> None:
    """The shutdown paths' one call: nothing logged when every task ends; otherwise one error event
    with the caller's fields and where each stuck task waits."""
    errors = _Errors()
    plain = asyncio.create_task(asyncio.sleep(3600))
    await asyncio.sleep(0)
    assert await cancel_and_log([plain], errors, "quiet_ignored_cancel", service="task") == []
    assert plain.cancelled() and errors.logged == []

    times = [1_000_000]
    forever = asyncio.create_task(_swallows(times, []), name="stubborn")
    other = asyncio.create_task(asyncio.sleep(3600), name="other")
    await asyncio.sleep(0)
    stuck = await cancel_and_log([forever, other], errors, "x_ignored_cancel", patience=0.1, service="task")
    assert stuck == [forever] and other.cancelled()
    [(event, fields)] = errors.logged
    assert event == "x_ignored_cancel" and fields["service"] == "task"
    assert list(fields["tasks"]) == ["stubborn"] and fields["tasks"]["stubborn"].endswith(" in _swallows")
    times[0] = 0
    forever.cancel()
    await asyncio.gather(forever, return_exceptions=True)
