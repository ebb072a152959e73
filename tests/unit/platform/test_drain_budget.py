"""The drain budget: one deadline fixed when the drain starts, and a preStop hook that lasts its `--wait`.

`Process` is driven with a recording component (the `Component` protocol, nothing else faked) whose
`begin_drain` takes a while, as a service's does while its Watch streams send their END: that time must
come out of the grace, not be added to it. The preStop hook (`python -m services.platform.prestop drain`)
runs against a real admin port whose /drain answers late.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import REGISTRY

from services.platform import prestop
from services.platform.messaging.memory import MemoryBroker
from services.platform.process import Process
from services.platform.server.admin import admin_app
from services.platform.server.http import HttpServer
from services.platform.settings import DrainSettings, MessagingSettings, Settings
from tests.helpers import free_port

BEGIN_DRAIN_SECONDS = 0.3  # what the component's begin_drain takes (a service: stream ENDs being sent)


class Recorder:
    """A component that records what the drain hands each step."""

    name = "recorder"
    ready = True

    def __init__(self) -> None:
        self.deadline: float | None = None
        self.wait_timeout = -1.0
        self.wait_called_at = 0.0

    async def start(self) -> int:
        return 0

    async def stop_accepting(self) -> None:
        return None

    async def begin_drain(self, deadline: float | None = None) -> None:
        self.deadline = deadline
        await asyncio.sleep(BEGIN_DRAIN_SECONDS)

    async def wait_idle(self, timeout: float) -> dict[str, bool]:
        self.wait_called_at, self.wait_timeout = time.monotonic(), timeout
        return {"finished": True}

    async def close(self) -> None:
        return None

    def snapshot(self) -> dict[str, Any]:
        return {"service": self.name}


async def _drained(drain: DrainSettings) -> tuple[Process, Recorder]:
    settings = Settings(metrics_port=0, drain=drain)
    broker = MemoryBroker(settings=MessagingSettings())
    recorder = Recorder()
    process = Process(settings, "budget", [recorder], broker)
    await process.start()
    await process.stop()
    return process, recorder


async def test_one_deadline_from_the_drain_start_bounds_every_step() -> None:
    drain = DrainSettings(grace_seconds=1.0, readiness_delay_seconds=0.2)
    process, recorder = await _drained(drain)
    assert process.drain_started_at is not None and process.deadline is not None
    assert process.deadline - process.drain_started_at == pytest.approx(1.2)  # start + delay + grace
    assert recorder.deadline == process.deadline  # begin_drain bounds its stream-END wait by it
    # wait_idle gets what is left of the same deadline: begin_drain's time came out of the grace.
    assert abs(recorder.wait_called_at + recorder.wait_timeout - process.deadline) < 0.01
    assert recorder.wait_timeout < 1.2 - BEGIN_DRAIN_SECONDS + 0.01
    assert recorder.wait_called_at >= process.drain_started_at + drain.readiness_delay_seconds


async def test_readiness_delay_runs_from_the_drain_start_not_after_begin_drain() -> None:
    drain = DrainSettings(grace_seconds=1.0, readiness_delay_seconds=0.5)
    process, recorder = await _drained(drain)
    assert process.drain_started_at is not None and process.deadline is not None
    assert recorder.wait_called_at >= process.drain_started_at + 0.5
    assert abs(recorder.wait_called_at + recorder.wait_timeout - process.deadline) < 0.01
    assert recorder.wait_timeout < 1.0 + 0.01  # never more than the grace after the delay


async def test_prestop_hook_keeps_its_wait_when_the_drain_response_is_slow() -> None:
    drain_arrived, answer = asyncio.Event(), asyncio.Event()

    async def slow_drain() -> None:
        drain_arrived.set()
        await answer.wait()  # longer than the hook's request timeout

    state = SimpleNamespace(not_ready_reason=str, draining=False, snapshot=dict)
    server = HttpServer(admin_app(state, slow_drain), "127.0.0.1", 0, name="admin")
    await server.start()
    try:
        started = time.monotonic()
        code = await asyncio.to_thread(
            prestop.main, ["drain", "--port", str(server.port), "--wait", "0.8", "--timeout", "0.2"]
        )
        elapsed = time.monotonic() - started
    finally:
        answer.set()
        await server.stop()
    assert code == 0 and drain_arrived.is_set()
    assert elapsed >= 0.8, "the hook returned before its --wait: SIGTERM would come early"


async def test_prestop_hook_returns_at_once_when_no_process_listens() -> None:
    started = time.monotonic()
    code = await asyncio.to_thread(prestop.main, ["drain", "--port", str(free_port()), "--wait", "5"])
    assert code == 0 and time.monotonic() - started < 3


async def test_the_drain_duration_and_the_draining_flag_are_exported() -> None:
    """`foundry_drain_duration_seconds{process}` observes drain start → resources closed once per
    drain (at least begin_drain's time here); `foundry_draining{process}` is 1 from then on."""

    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(name, {"process": "budget"}) or 0.0

    count, total = (
        sample("foundry_drain_duration_seconds_count"),
        sample("foundry_drain_duration_seconds_sum"),
    )
    await _drained(DrainSettings(grace_seconds=1.0, readiness_delay_seconds=0.0))
    assert sample("foundry_drain_duration_seconds_count") == count + 1
    assert sample("foundry_drain_duration_seconds_sum") - total >= BEGIN_DRAIN_SECONDS
    assert sample("foundry_draining") == 1.0
