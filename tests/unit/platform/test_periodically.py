"""`periodically`: a lease renewal or liveness stamp beside a block of work, stopped between two
beats, never inside one (a cancel landing in a beat's commit made SQLAlchemy log "Exception during
reset or similar" and discard the connection, seen in the embedded mesh's log)."""

from __future__ import annotations

import asyncio

import pytest

from services.platform.aio import periodically


async def test_beats_run_every_interval_while_the_block_runs() -> None:
    beats: list[float] = []
    loop = asyncio.get_running_loop()

    async def beat() -> None:
        beats.append(loop.time())

    began = loop.time()
    async with periodically(0.05, beat, name="t"):
        await asyncio.sleep(0.32)
    count = len(beats)
    await asyncio.sleep(0.15)
    assert 4 <= count <= 7 and len(beats) == count  # none after the block
    assert beats[0] - began >= 0.05


async def test_leaving_the_block_waits_for_the_beat_in_flight_instead_of_cancelling_it() -> None:
    started, finished = asyncio.Event(), list[bool]()

    async def beat() -> None:
        started.set()
        await asyncio.sleep(0.3)  # a commit in flight
        finished.append(True)

    async def work() -> None:
        async with periodically(0.01, beat, name="t"):
            await asyncio.sleep(3600)

    task = asyncio.create_task(work())
    await started.wait()
    task.cancel()  # the shutdown's cancel reaches the work, not the beat's commit
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished == [True]


async def test_a_second_cancel_while_waiting_for_the_beat_cancels_the_beat() -> None:
    started, cut = asyncio.Event(), asyncio.Event()

    async def beat() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cut.set()
            raise

    async def work() -> None:
        async with periodically(0.01, beat, name="t"):
            await asyncio.sleep(3600)

    task = asyncio.create_task(work())
    await started.wait()
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done() and not cut.is_set()  # waiting for the beat
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(cut.wait(), 1)


async def test_a_beat_returning_false_ends_the_beats_and_the_block_goes_on() -> None:
    beats: list[int] = []

    async def beat() -> bool:
        beats.append(1)
        return False

    async with periodically(0.02, beat, name="t"):
        await asyncio.sleep(0.2)
    assert beats == [1]
