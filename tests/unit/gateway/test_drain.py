"""The gateway's drain follows the services' rule (README "Shutdown"): requests in flight get until the
deadline, are then cancelled (answering 503 UNAVAILABLE `DRAINING`, which clients retry) and get the
unwind budget to end; upstream channels close only after that.

The upstream is slow because a `TcpProxy` in front of the real organization service holds every byte.
Ordering is checked by instrumentation (what was still running when the channels closed), not by timing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.helpers import assert_eventually
from tests.unit.gateway.harness import running

SLOW = "GET /v1/organizations"


async def test_request_in_flight_at_the_deadline_is_cancelled_and_channels_close_after_it_ended(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, proxy_organization=True) as h:
        assert h.proxy is not None
        gateway, state = h.gateway, h.gateway.state
        alice = await h.signed_in("alice")
        assert (await alice.get("/v1/organizations")).status_code == 200  # session check now cached

        timeline: list[tuple[str, object]] = []
        leave, close_channels = state.leave, gateway.upstreams.close

        def leave_observed() -> None:
            timeline.append(("request_ended", state.cancelled_by_drain()))
            leave()

        async def close_channels_observed() -> None:
            timeline.append(("channels_closing", state.active_requests))
            await close_channels()

        state.leave = leave_observed  # type: ignore[method-assign]
        gateway.upstreams.close = close_channels_observed  # type: ignore[method-assign]

        h.proxy.pause()
        try:
            request = asyncio.create_task(alice.get("/v1/organizations", headers={"x-request-timeout": "30"}))

            async def in_flight() -> None:
                assert state.active_paths() == {SLOW: 1}

            await assert_eventually(in_flight, timeout=10, interval=0.01)
            assert gateway.snapshot()["active_request_paths"] == {SLOW: 1}  # what the drain log names
            await gateway.begin_drain()
            finished = await gateway.wait_idle(0.2)  # the upstream answers nothing: past the deadline
            await gateway.close()
            response = await request
        finally:
            h.proxy.resume()

        assert finished == {"requests_finished": False}
        # Cancelled by the drain, ended, and only then were the channels closed, with nothing running.
        assert timeline[:2] == [("request_ended", True), ("channels_closing", 0)], timeline
        body = response.json()
        assert (response.status_code, body["status"]) == (503, "UNAVAILABLE"), body
        assert [d.get("reason") for d in body["details"]] == ["DRAINING"]


async def test_request_finishing_inside_the_grace_is_not_cancelled(tmp_path: Path) -> None:
    async with running(tmp_path, proxy_organization=True) as h:
        assert h.proxy is not None
        gateway, state = h.gateway, h.gateway.state
        alice = await h.signed_in("alice")
        assert (await alice.get("/v1/organizations")).status_code == 200
        h.proxy.pause()
        request = asyncio.create_task(alice.get("/v1/organizations", headers={"x-request-timeout": "30"}))

        async def in_flight() -> None:
            assert state.active_paths() == {SLOW: 1}

        await assert_eventually(in_flight, timeout=10, interval=0.01)
        await gateway.begin_drain()
        idle = asyncio.create_task(gateway.wait_idle(30))
        h.proxy.resume()  # the upstream answers well inside the grace
        assert await idle == {"requests_finished": True}
        response = await request
        assert response.status_code == 200, response.text
