"""The subscription manager against the real organization service's WatchOrganizationSummary (fed by
the real github-data service's syncs): sharing, ref counts (freed within one event-loop tick),
linger teardown, resume (each subscriber from its own token, caught up privately when the shared
upstream cannot serve it), rotation, membership, reconnecting after the service restarted, ends, the
default backoff and linger, and a snapshot for every topic kind (with the task and sandbox services)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from starlette.types import ASGIApp, Message

from gateway.app import GatewayState, create_app
from gateway.stream import frames
from gateway.stream.upstream import backoff_delay
from services.platform.channels import Channels
from services.platform.settings import GatewaySettings, ServiceName, Settings, WatchSettings
from tests.helpers import assert_eventually
from tests.unit.gateway.harness import Harness, SseEvent, SseReader, page_state, running, sse

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
        async with running(tmp_path, linger_seconds=3) as h:
            alice = await h.signed_in("alice", member_of=[ORG])
            async with sse(alice, f"/v1/stream?topic={TOPIC}") as a:
                await a.until("snapshot")
            await assert_eventually(
                lambda: _check(h.gateway.manager.stats()["upstreams"] == {TOPIC: 0}), timeout=2.5
            )
            async with sse(alice, f"/v1/stream?topic={TOPIC}") as a:  # back within the linger: same upstream
                await a.until("snapshot")
                assert h.summary_watches_opened() == 1
            await assert_eventually(lambda: _no_upstreams(h), timeout=10)
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

    async def test_disconnect_frees_the_share_within_one_event_loop_tick(self, tmp_path: Path) -> None:
        """Driven at the ASGI boundary, as uvicorn drives the app: once the server has the
        disconnect for `receive()`, one turn of the event loop frees the tab's share (the connection,
        the subscriber count and its metric), with no write or heartbeat needed."""
        async with running(tmp_path, heartbeat_seconds=60) as h:
            alice = await h.signed_in("alice", member_of=[ORG])
            subscribers = metric("foundry_gateway_subscribers", topic_type="organization")
            connections = metric("foundry_gateway_stream_connections")
            async with AsgiTab.open(h.gateway.app, alice, f"/v1/stream?topic={TOPIC}") as tab:
                await tab.until(b"event: snapshot")
                assert h.gateway.manager.stats() == {"connections": 1, "upstreams": {TOPIC: 1}}
                assert metric("foundry_gateway_subscribers", topic_type="organization") == subscribers + 1
                assert metric("foundry_gateway_stream_connections") == connections + 1
                tab.disconnect()
                await asyncio.sleep(0)  # one tick
                assert h.gateway.manager.stats() == {"connections": 0, "upstreams": {TOPIC: 0}}
                assert metric("foundry_gateway_subscribers", topic_type="organization") == subscribers
                assert metric("foundry_gateway_stream_connections") == connections


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
                    # Cut off right after the hello, the tab would come back with the same position.
                    assert frames.decode_position(first.id) == frames.decode_position(last.id)
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

    async def test_pages_back_with_different_tokens_each_resume_without_any_snapshot(
        self, tmp_path: Path
    ) -> None:
        """Two pages of one topic come back to a restarted gateway with different tokens (one saw a
        change the other did not). The first reopens the shared upstream from its token; the second,
        whose token that upstream never saw, is caught up by a private Watch from its own token and
        then joins the shared one. Neither page is sent a snapshot, each gets every change once, and
        both end up with the state a fresh page bootstraps."""
        url = f"/v1/stream?topic={TOPIC}"
        async with running(tmp_path) as h:
            alice = await h.signed_in("alice", member_of=[ORG])
            async with sse(alice, url) as a_before:
                await a_before.until("snapshot")
                async with sse(alice, url) as b_before:
                    await b_before.until("snapshot")
                one = await h.add_repository(alice, ORG, "one")
                await a_before.until_upsert_of(one)
            await h.gateway.manager.close()  # a new gateway process: no upstream, no history
            two = await h.add_repository(alice, ORG, "while-away")
            catchups = metric("foundry_gateway_upstream_catchups_total", topic_type="organization")
            resume_a = {"Last-Event-ID": a_before.events[-1].id}
            resume_b = {"Last-Event-ID": b_before.events[-1].id}
            assert frames.decode_position(resume_a["Last-Event-ID"]) != frames.decode_position(
                resume_b["Last-Event-ID"]
            )
            async with sse(alice, url, headers=resume_a) as a, sse(alice, url, headers=resume_b) as b:
                await a.until_upsert_of(two)
                await b.until_upsert_of(two)
                upstream = h.gateway.manager.upstreams[TOPIC]
                await assert_eventually(lambda: _check(not upstream.catchups))  # b joined the fan-out
                await assert_eventually(lambda: _check(h.summary_watches_open() == 1))  # private one closed
                assert metric("foundry_gateway_upstream_catchups_total", topic_type="organization") == (
                    catchups + 1
                )
                three = await h.add_repository(alice, ORG, "after")
                await a.until_upsert_of(three)
                await b.until_upsert_of(three)
                async with sse(alice, url) as fresh:
                    await fresh.until("snapshot")
                    for page in (a, b, fresh):
                        await _quiet(page)
                    for page in (a, b):
                        assert page.count("snapshot") == 0 and page.count("reset") == 0, page.events
                        _no_duplicates(page, TOPIC)
                    _same(page_state(a_before.events + a.events), fresh.state())
                    _same(page_state(b_before.events + b.events), fresh.state())

    async def test_new_tab_on_a_resumed_upstream_gets_its_own_snapshot_not_a_refetch_for_all(
        self, tmp_path: Path
    ) -> None:
        """The shared upstream was resumed from a page's token (after a gateway restart), so it has
        no full state to give. A new tab without a token gets a snapshot from a private Watch; the
        resumed page is not sent one, and the shared upstream keeps the full state the private Watch
        brought, so the next new tab gets its snapshot without any further Watch."""
        url = f"/v1/stream?topic={TOPIC}"
        async with running(tmp_path) as h:
            alice = await h.signed_in("alice", member_of=[ORG])
            await h.add_repository(alice, ORG, "first")
            async with sse(alice, url) as before:
                last = await before.until("snapshot")
            await h.gateway.manager.close()
            async with sse(alice, url, headers={"Last-Event-ID": last.id}) as a:
                await a.until("subscribed")
                await assert_eventually(lambda: _check(h.summary_watches_open() == 1))
                async with sse(alice, url) as c:
                    snapshot = await c.until("snapshot")
                    assert "first" in [i["resource"].get("fullName") for i in snapshot.data["items"]]
                    upstream = h.gateway.manager.upstreams[TOPIC]
                    await assert_eventually(lambda: _check(not upstream.catchups))
                    assert upstream.complete  # it kept the private snapshot's state
                    await assert_eventually(lambda: _check(h.summary_watches_open() == 1))
                    opened = h.summary_watches_opened()
                    async with sse(alice, url) as d:
                        assert page_state([await d.until("snapshot")]) == c.state()
                        assert h.summary_watches_opened() == opened
                        second = await h.add_repository(alice, ORG, "second")
                        for page in (a, c, d):
                            await page.until_upsert_of(second)
                        for page in (a, c, d):
                            await _quiet(page)
                        assert a.count("snapshot") == 0 and a.count("reset") == 0
                        _same(page_state(before.events + a.events), c.state())
                        _same(d.state(), c.state())

    async def test_page_ahead_of_a_bootstrapping_upstream_joins_when_the_snapshot_reaches_it(
        self, tmp_path: Path
    ) -> None:
        """The shared upstream has no position yet (its first open was refused, it waits out its
        backoff) when a page comes back with its token: the page's private Watch brings it to the
        head at once, and it joins the fan-out when the shared stream's snapshot gets there."""
        url = f"/v1/stream?topic={TOPIC}"
        # The backoff is the window for restarting the service and catching b up before the shared
        # upstream takes its snapshot: wide enough for a busy machine.
        async with running(tmp_path, backoff_initial=9.0, backoff_max=9.0) as h:  # < the 10 s read timeout
            alice = await h.signed_in("alice", member_of=[ORG])
            async with sse(alice, url) as b_before:
                await b_before.until("snapshot")
            one = await h.add_repository(alice, ORG, "one")
            # The tabs' session and membership checks are answered from the gateway's 10 s caches
            # while the organization service is down.
            async with sse(alice, url) as warm:
                await warm.until("snapshot")
            await h.gateway.manager.close()
            await h.stop_organization()
            async with sse(alice, url) as a:
                await a.until("status", state="reconnecting")  # the shared upstream waits 9 s
                await h.start_organization()
                await h.settled(alice, ORG, repositories=1)  # the gateway reaches it again
                resume = {"Last-Event-ID": b_before.events[-1].id}
                async with sse(alice, url, headers=resume) as b:
                    await b.until_upsert_of(one)
                    upstream = h.gateway.manager.upstreams[TOPIC]
                    assert a.count("snapshot") == 0 and list(upstream.catchups) != [], "b is ahead"
                    await a.until("snapshot", within=25)
                    await assert_eventually(lambda: _check(not upstream.catchups))
                    two = await h.add_repository(alice, ORG, "two")
                    await a.until_upsert_of(two)
                    await b.until_upsert_of(two)
                    await _quiet(b)
                    await _quiet(a)
                    assert b.count("snapshot") == 0
                    _no_duplicates(b, TOPIC)
                    _same(page_state(b_before.events + b.events), a.state())

    async def test_old_token_past_the_history_is_caught_up_not_refetched(self, tmp_path: Path) -> None:
        """A page whose token has left the (here one-frame) history of a live shared upstream is
        caught up privately instead of being sent a snapshot."""
        url = f"/v1/stream?topic={TOPIC}"
        async with running(tmp_path, history_size=1) as h:
            alice = await h.signed_in("alice", member_of=[ORG])
            async with sse(alice, url) as a:
                await a.until("snapshot")
                async with sse(alice, url) as b_before:
                    await b_before.until("snapshot")
                names = [await h.add_repository(alice, ORG, n) for n in ("one", "two")]
                await a.until_upsert_of(names[-1])
                async with sse(alice, url, headers={"Last-Event-ID": b_before.events[-1].id}) as b:
                    for name in names:
                        await b.until_upsert_of(name)
                    await assert_eventually(lambda: _check(not h.gateway.manager.upstreams[TOPIC].catchups))
                    await _quiet(b)
                    await _quiet(a)
                    assert b.count("snapshot") == 0
                    _no_duplicates(b, TOPIC)
                    _same(page_state(b_before.events + b.events), a.state())


class TestDefaults:
    def test_reconnect_backoff_doubles_from_1_s_up_to_30_s(self) -> None:
        assert [backoff_delay(attempt) for attempt in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]

    def test_create_app_uses_the_default_backoff_and_linger(self, tmp_path: Path) -> None:
        assert GatewaySettings.model_fields["upstream_linger_seconds"].default == 30.0
        settings = Settings(data_dir=tmp_path / "data")
        app = create_app(settings, Channels(settings, "gateway"), GatewayState())
        manager = app.state.manager
        assert manager.linger_seconds == settings.gateway.upstream_linger_seconds == 30.0
        assert [manager.backoff_delay(attempt) for attempt in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]

    async def test_the_running_gateways_upstreams_use_the_defaults(self, tmp_path: Path) -> None:
        async with running(tmp_path) as h:  # GatewayComponent with no timer overrides
            alice = await h.signed_in("alice", member_of=[ORG])
            async with sse(alice, f"/v1/stream?topic={TOPIC}") as a:
                await a.until("snapshot")
                upstream = h.gateway.manager.upstreams[TOPIC]
                assert [upstream.backoff_delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
                assert h.gateway.manager.linger_seconds == 30.0


class TestTopicKinds:
    async def test_every_topic_kind_gets_a_snapshot_through_the_gateway(self, tmp_path: Path) -> None:
        """app, organization summary, task, session, transcript and sandbox processes, on one tab,
        against the real organization, github-data, task and sandbox services."""
        services: list[ServiceName] = ["organization", "github_data", "sandbox", "task"]
        async with running(tmp_path, services=services) as h:
            alice = await h.signed_in("alice", member_of=[ORG])
            repository = await h.committed_repository(alice, ORG, "demo")
            ready = await h.ready_task(alice, ORG, repository)
            task, session = ready["task"], ready["session"]
            sandbox, agent_session = task["sandbox"]["name"], session["sandboxSession"]
            # Something in each topic: a message (the transcript) and a process (the processes).
            sent = await alice.post(
                f"/v1/{session['name']}:sendMessage", json={"text": "hello", "requestId": str(uuid.uuid4())}
            )
            assert sent.status_code == 200, sent.text
            started = await alice.post(
                f"/v1/{sandbox}/processes",
                json={"process": {"command": "true"}, "requestId": str(uuid.uuid4())},
            )
            assert started.status_code == 200, started.text

            async def transcribed() -> None:
                response = await alice.get(f"/v1/{agent_session}/events")
                assert response.status_code == 200 and response.json().get("sessionEvents"), response.text

            await assert_eventually(transcribed, timeout=20)
            topics = {
                "app": "foundry.organization.v1.User",
                TOPIC: "foundry.organization.v1.RepositorySummary",
                f"task:{task['name']}": "foundry.task.v1.Task",
                f"session:{session['name']}": "foundry.task.v1.Session",
                f"transcript:{agent_session}": "foundry.sandbox.v1.SessionEvent",
                f"processes:{sandbox}": "foundry.sandbox.v1.Process",
            }
            query = "&".join(f"topic={t}" for t in topics)
            async with sse(alice, f"/v1/stream?{query}") as tab:
                subscribed = await tab.until("subscribed")
                assert sorted(subscribed.data["topics"]) == sorted(topics)
                snapshots: dict[str, SseEvent] = {}
                while len(snapshots) < len(topics):
                    event = await tab.next()
                    assert event.event != "error", event.data
                    if event.event == "snapshot":
                        snapshots[event.data["topic"]] = event
                for topic, item_type in topics.items():
                    types = {
                        i["resource"]["@type"].rsplit("/", 1)[-1] for i in snapshots[topic].data["items"]
                    }
                    assert item_type in types, (topic, types)
                assert task["name"] in page_state(list(snapshots.values()))[f"task:{task['name']}"]


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


async def _quiet(page: SseReader, seconds: float = 0.5) -> None:
    """Read until the page has been sent nothing for `seconds` (trailing changes applied)."""
    with contextlib.suppress(TimeoutError):
        while True:
            await page.next(seconds)


def _no_duplicates(page: SseReader, topic: str) -> None:
    """No change of `topic` reached the page twice (each position a frame carries is new)."""
    positions = [
        frames.decode_position(e.id)[topic]
        for e in page.events
        if e.event in ("upsert", "delete") and e.data.get("topic") == topic
    ]
    assert len(positions) == len(set(positions)), positions


class AsgiTab:
    """A browser stream driven at the ASGI boundary the way uvicorn drives the app: `receive()`
    returns the request, then waits for the server's disconnect event (`disconnect()`)."""

    def __init__(self, app: ASGIApp, client: httpx.AsyncClient, path_and_query: str) -> None:
        path, _, query = path_and_query.partition("?")
        cookie = "; ".join(f"{name}={value}" for name, value in client.cookies.items())
        self.scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [
                (b"host", b"127.0.0.1"),
                (b"cookie", cookie.encode()),
                (b"accept", b"text/event-stream"),
            ],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 80),
        }
        self.app = app
        self.body = b""
        self._request_sent = False
        self._disconnected = asyncio.Event()
        self._sent = asyncio.Event()

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, app: ASGIApp, client: httpx.AsyncClient, path_and_query: str
    ) -> AsyncIterator[AsgiTab]:
        tab = cls(app, client, path_and_query)
        task = asyncio.ensure_future(tab.app(tab.scope, tab._receive, tab._send))
        try:
            yield tab
        finally:
            tab.disconnect()
            await asyncio.wait_for(task, 5)

    async def _receive(self) -> Message:
        if not self._request_sent:
            self._request_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._disconnected.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200, message
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")
        self._sent.set()

    def disconnect(self) -> None:
        self._disconnected.set()

    async def until(self, data: bytes, within: float = 10.0) -> None:
        async def seen() -> None:
            while data not in self.body:
                self._sent.clear()
                await self._sent.wait()

        await asyncio.wait_for(seen(), within)


def _no_upstreams(h: Harness) -> None:
    assert h.gateway.manager.upstreams == {}


def _same(page: dict[str, Any], fresh: dict[str, Any]) -> None:
    """The page holds what a fresh bootstrap holds (the differing items in the message)."""
    differing = {
        (topic, name): (page.get(topic, {}).get(name), fresh.get(topic, {}).get(name))
        for topic in set(page) | set(fresh)
        for name in set(page.get(topic, {})) | set(fresh.get(topic, {}))
        if page.get(topic, {}).get(name) != fresh.get(topic, {}).get(name)
    }
    assert page == fresh, differing
