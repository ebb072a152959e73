"""The subscription manager against the real organization service's WatchOrganizationSummary (fed by
the real github-data service's syncs): sharing, ref counts, linger teardown, resume, rotation,
membership, reconnecting after the service restarted, and ends."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from gateway.stream import frames
from services.platform.settings import WatchSettings
from tests.helpers import assert_eventually
from tests.unit.gateway.harness import Harness, running, sse

ORG = "organizations/acme"
TOPIC = f"organization:{ORG}"


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class TestSharing:
    async def test_two_tabs_on_one_organization_share_one_upstream_watch(self, tmp_path: Path) -> None:
        async with running(tmp_path) as h:
            alice = await h.signed_in("alice", member_of=[ORG])
            bob = await h.signed_in("bob", member_of=[ORG])
            await h.add_repository(alice, ORG, "first")
            async with (
                sse(alice, f"/v1/stream?topic={TOPIC}") as a,
                sse(bob, f"/v1/stream?topic={TOPIC}") as b,
            ):
                snap_a = await a.until("snapshot")
                snap_b = await b.until("snapshot")
                assert "first" in [i["resource"].get("fullName") for i in snap_a.data["items"]]
                assert snap_b.data == snap_a.data
                assert h.summary_watches_opened() == 1
                assert h.gateway.manager.stats()["upstreams"] == {TOPIC: 2}

                rendered = metric("foundry_gateway_events_rendered_total", topic_type="organization")
                fanned = metric("foundry_gateway_events_fanned_out_total", topic_type="organization")
                second = await h.add_repository(alice, ORG, "second")
                up_a, up_b = await a.until_upsert_of(second), await b.until_upsert_of(second)
                assert up_a.data["item"]["resource"]["fullName"] == "second" and up_b.data == up_a.data
                # Read together (no await between): each event was rendered once, sent to both tabs.
                now_rendered = metric("foundry_gateway_events_rendered_total", topic_type="organization")
                now_fanned = metric("foundry_gateway_events_fanned_out_total", topic_type="organization")
                assert now_rendered > rendered
                assert now_fanned - fanned == 2 * (now_rendered - rendered)
                assert h.summary_watches_opened() == 1

    async def test_upstream_lingers_after_last_subscriber_then_closes(self, tmp_path: Path) -> None:
        async with running(tmp_path, linger_seconds=0.5) as h:
            alice = await h.signed_in("alice", member_of=[ORG])
            async with sse(alice, f"/v1/stream?topic={TOPIC}") as a:
                await a.until("snapshot")
            await assert_eventually(
                lambda: _check(h.gateway.manager.stats()["upstreams"] == {TOPIC: 0}), timeout=0.4
            )
            async with sse(alice, f"/v1/stream?topic={TOPIC}") as a:  # back within the linger: same upstream
                await a.until("snapshot")
                assert h.summary_watches_opened() == 1
            await assert_eventually(lambda: _no_upstreams(h), timeout=5)
            await assert_eventually(lambda: _check(h.summary_watches_open() == 0), timeout=5)
            assert h.summary_watches_opened() == 1

    async def test_disconnected_tab_frees_its_share_without_waiting_for_a_write(self, tmp_path: Path) -> None:
        async with running(tmp_path, heartbeat_seconds=60) as h:
            alice = await h.signed_in("alice", member_of=[ORG])
            async with sse(alice, f"/v1/stream?topic={TOPIC}") as a:
                await a.until("snapshot")
                assert h.gateway.manager.stats() == {"connections": 1, "upstreams": {TOPIC: 1}}
            await assert_eventually(lambda: _check(h.gateway.manager.stats()["connections"] == 0), timeout=1)
            assert h.gateway.manager.stats()["upstreams"] == {TOPIC: 0}


class TestAuthorization:
    async def test_non_member_gets_a_topic_error_and_is_not_attached(self, tmp_path: Path) -> None:
        async with running(tmp_path) as h:
            await h.signed_in("alice", member_of=[ORG])
            mallory = await h.signed_in("mallory")
            async with sse(mallory, f"/v1/stream?topic={TOPIC}") as m:
                error = await m.until("error")
                assert error.data == {
                    "topic": TOPIC,
                    "code": "PERMISSION_DENIED",
                    "message": error.data["message"],
                }
                subscribed = await m.until("subscribed")
                assert subscribed.data["topics"] == []
            assert h.summary_watches_opened() == 0

    async def test_stream_without_session_is_401(self, tmp_path: Path) -> None:
        async with running(tmp_path) as h:
            anonymous = await h.browser()
            response = await anonymous.get(f"/v1/stream?topic={TOPIC}")
            assert response.status_code == 401 and response.json()["status"] == "UNAUTHENTICATED"


class TestMultiplexing:
    async def test_topics_are_added_and_removed_on_the_open_stream(self, tmp_path: Path) -> None:
        other = "organizations/beta"
        async with running(tmp_path, linger_seconds=0) as h:
            alice = await h.signed_in("alice", member_of=[ORG, other])
            async with sse(alice, "/v1/stream") as a:
                hello = await a.until("hello")
                stream_id = hello.data["stream"]
                response = await alice.post(
                    f"/v1/streams/{stream_id}:subscribe", json={"topics": [TOPIC, f"organization:{other}"]}
                )
                assert response.status_code == 200 and response.json()["errors"] == []
                await a.until("snapshot", topic=TOPIC)
                await a.until("snapshot", topic=f"organization:{other}")
                assert h.summary_watches_open() == 2
                response = await alice.post(f"/v1/streams/{stream_id}:unsubscribe", json={"topics": [TOPIC]})
                assert response.json()["topics"] == [f"organization:{other}"]
                await assert_eventually(lambda: _check(TOPIC not in h.gateway.manager.stats()["upstreams"]))
                await assert_eventually(lambda: _check(h.summary_watches_open() == 1))
                repository = await h.add_repository(alice, other, "still-live")
                upsert = await a.until_upsert_of(repository)
                assert upsert.data["topic"] == f"organization:{other}"

    async def test_bad_topic_is_rejected_per_topic(self, tmp_path: Path) -> None:
        async with running(tmp_path) as h:
            alice = await h.signed_in("alice", member_of=[ORG])
            async with sse(alice, "/v1/stream?topic=task:nonsense") as a:
                error = await a.until("error")
                assert error.data["code"] == "INVALID_ARGUMENT"


class TestResume:
    async def test_reconnect_with_last_event_id_replays_only_missed_changes(self, tmp_path: Path) -> None:
        async with running(tmp_path) as h:
            alice = await h.signed_in("alice", member_of=[ORG])
            bob = await h.signed_in("bob", member_of=[ORG])
            async with sse(bob, f"/v1/stream?topic={TOPIC}") as b:  # keeps the upstream alive
                await b.until("snapshot")
                async with sse(alice, f"/v1/stream?topic={TOPIC}") as a:
                    last = await a.until("snapshot")
                missed = await h.add_repository(bob, ORG, "missed")
                await b.until_upsert_of(missed)
                async with sse(alice, "/v1/stream", headers={"Last-Event-ID": last.id}) as a:
                    first = await a.next()
                    assert first.event == "hello"
                    replayed = await a.until_upsert_of(missed)
                    assert replayed.data["item"]["resource"]["fullName"] == "missed"
                    assert {e.event for e in a.events[1:]} == {"upsert"}  # no snapshot, only changes
            assert h.summary_watches_opened() == 1

    async def test_fresh_gateway_resumes_a_page_from_its_token_without_snapshot(self, tmp_path: Path) -> None:
        async with running(tmp_path) as h:
            alice = await h.signed_in("alice", member_of=[ORG])
            async with sse(alice, f"/v1/stream?topic={TOPIC}") as a:
                last = await a.until("snapshot")
            await h.gateway.manager.close()  # a new gateway process knows no upstream
            assert h.gateway.manager.upstreams == {}
            away = await h.add_repository(alice, ORG, "while-away")
            async with sse(alice, f"/v1/stream?resume={last.id}") as a:
                change = await a.until_upsert_of(away)
                assert change.data["item"]["resource"]["fullName"] == "while-away"
                assert [e.event for e in a.events[:2]] == ["hello", "subscribed"]
                assert {e.event for e in a.events[2:]} == {"upsert"}

    async def test_upstream_rotation_is_invisible_to_the_browser(self, tmp_path: Path) -> None:
        watch = WatchSettings(max_stream_seconds=0.5)
        async with running(tmp_path, watch=watch) as h:
            alice = await h.signed_in("alice", member_of=[ORG])
            async with sse(alice, f"/v1/stream?topic={TOPIC}") as a:
                await a.until("snapshot")
                await assert_eventually(lambda: _check(h.summary_watches_opened() >= 2), timeout=5)
                repository = await h.add_repository(alice, ORG, "after-rotation")
                change = await a.until_upsert_of(repository)
                assert change.data["item"]["resource"]["fullName"] == "after-rotation"
                assert [e.event for e in a.events].count("snapshot") == 1


class TestUpstreamFailures:
    async def test_restarted_service_is_reconnected_with_backoff_and_resumed_from_its_token(
        self, tmp_path: Path
    ) -> None:
        """The organization service drains and stops: the upstream ends `draining`, reopening is
        refused (UNAVAILABLE) and retried with backoff, and once a new host serves the same port the
        upstream resumes from its token, so the tab gets the next change without a new snapshot."""
        async with running(tmp_path, backoff_initial=0.2, backoff_max=1.0) as h:
            alice = await h.signed_in("alice", member_of=[ORG])
            async with sse(alice, f"/v1/stream?topic={TOPIC}") as a:
                await a.until("snapshot")

                # The reopen lands on the draining host (END `draining` at once, or UNAVAILABLE from
                # its guard) or on the stopped port (UNAVAILABLE): which one is a race, so count both.
                def reconnects_now() -> float:
                    return sum(
                        metric(
                            "foundry_gateway_upstream_reconnects_total", topic_type="organization", cause=c
                        )
                        for c in ("unavailable", "draining")
                    )

                reconnects = reconnects_now()
                await h.stop_organization()
                status = await a.until("status", state="reconnecting")
                assert status.data["retryInSeconds"] >= 0.2
                await h.start_organization()
                repository = await h.add_repository(alice, ORG, "after-restart")
                change = await a.until_upsert_of(repository, within=15)
                assert change.data["item"]["resource"]["fullName"] == "after-restart"
                assert [e.event for e in a.events].count("snapshot") == 1
                states = [e.data["state"] for e in a.events if e.event == "status"]
                assert states[0] == "reconnecting" and states[-1] == "live"
                assert reconnects_now() > reconnects


class TestStreamEnds:
    async def test_heartbeat_is_a_bookmark_with_the_position(self, tmp_path: Path) -> None:
        async with running(tmp_path, heartbeat_seconds=0.2) as h:
            alice = await h.signed_in("alice", member_of=[ORG])
            async with sse(alice, f"/v1/stream?topic={TOPIC}") as a:
                snapshot = await a.until("snapshot")
                bookmark = await a.until("bookmark", within=2)
                assert bookmark.id == snapshot.id and bookmark.data == {}

    async def test_draining_gateway_ends_streams_with_resume_position(self, tmp_path: Path) -> None:
        async with running(tmp_path) as h:
            alice = await h.signed_in("alice", member_of=[ORG])
            async with sse(alice, f"/v1/stream?topic={TOPIC}") as a:
                snapshot = await a.until("snapshot")
                assert metric("foundry_gateway_active_requests") >= 1  # this SSE request
                await h.gateway.begin_drain()
                end = await a.until("end")
                assert end.data == {"reason": "draining", "resume_from": snapshot.id}
                with pytest.raises(EOFError):
                    await a.next()
            refused = await alice.get("/v1/organizations")  # no request enters a draining gateway
            assert refused.status_code == 503 and "DRAINING" in refused.text, refused.text

            def none_in_flight() -> None:
                assert metric("foundry_gateway_active_requests") == 0

            await assert_eventually(none_in_flight)

    async def test_slow_tab_is_ended_as_lagging_not_buffered(self, tmp_path: Path) -> None:
        async with running(tmp_path, queue_size=3) as h:
            alice = await h.signed_in("alice", member_of=[ORG])
            async with sse(alice, f"/v1/stream?topic={TOPIC}") as a:
                await a.until("snapshot")
                # A tab that stops reading only backs frames up once the kernel's socket buffers are
                # full; pushing frames into its connection directly reaches that state at once.
                (conn,) = h.gateway.manager.connections.values()
                for i in range(5):  # frames queue up faster than this tab is read
                    conn.deliver(TOPIC, None, f"t{i}")
                    conn.push(frames.bookmark())
                end = await a.until("end")
                assert end.data["reason"] == "lagging"


def _check(condition: bool) -> None:
    assert condition


def _no_upstreams(h: Harness) -> None:
    assert h.gateway.manager.upstreams == {}
