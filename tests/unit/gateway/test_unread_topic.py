"""The per-user `unread:organizations/{org}` topic (TaskService.WatchUserTaskStates) through the real
gateway: each user's tabs get only that user's UserTaskStates, from an upstream of their own that
runs as them; a non-member's subscription is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.unit.gateway.harness import SseReader, running, sse

ORG = "organizations/acme"
TOPIC = f"unread:{ORG}"


async def _set_unread(client: httpx.AsyncClient, session: str, unread: bool) -> None:
    response = await client.patch(f"/v1/{session}/userStates/me?updateMask=unread", json={"unread": unread})
    assert response.status_code == 200, response.text


def _unread(item: dict[str, Any]) -> list[str]:
    return [s["name"] for s in item["resource"].get("sessions", []) if s.get("unread")]


async def _upsert(tab: SseReader) -> dict[str, Any]:
    event = await tab.until("upsert", topic=TOPIC)
    item: dict[str, Any] = event.data["item"]
    return item


async def test_each_user_gets_only_their_own_unread_state(tmp_path: Path) -> None:
    async with running(tmp_path, services=("organization", "github_data", "task")) as h:
        alice = await h.signed_in("alice", member_of=[ORG])
        bob = await h.signed_in("bob", member_of=[ORG])
        carol = await h.signed_in("carol")  # not a member
        repository = await h.add_repository(alice, ORG, "demo")
        created = await alice.post(
            f"/v1/{ORG}/tasks", json={"task": {"repository": repository, "prompt": "hi"}}
        )
        assert created.status_code == 200, created.text
        task = created.json()["task"]
        session = task["sessions"][0]["name"]
        me = (await alice.get("/v1/users/me")).json()["user"]["name"].removeprefix("users/")
        him = (await bob.get("/v1/users/me")).json()["user"]["name"].removeprefix("users/")
        alice_state, bob_state = f"{task['name']}/userStates/{me}", f"{task['name']}/userStates/{him}"

        async with (
            sse(alice, f"/v1/stream?topic={TOPIC}") as a,
            sse(bob, f"/v1/stream?topic={TOPIC}") as b,
            sse(carol, f"/v1/stream?topic={TOPIC}") as c,
        ):
            snap = await a.until("snapshot", topic=TOPIC)
            assert [i["name"] for i in snap.data["items"]] == [alice_state]  # she created the task
            assert _unread(snap.data["items"][0]) == []
            assert (await b.until("snapshot", topic=TOPIC)).data["items"] == []
            refused = await c.until("error", topic=TOPIC)
            assert refused.data["code"] == "PERMISSION_DENIED", refused.data
            # One upstream per user (the key names the user), none for carol.
            assert sorted(h.gateway.manager.stats()["upstreams"]) == sorted(
                [f"{TOPIC}/users/{me}", f"{TOPIC}/users/{him}"]
            )

            # Bob's state changes: it reaches bob's tab only.
            await _set_unread(bob, session, True)
            item = await _upsert(b)
            assert item["name"] == bob_state and _unread(item) == [f"{session}/userStates/{him}"]
            # Alice's changes reach her tab, and nothing of bob's came before them.
            await _set_unread(alice, session, True)
            item = await _upsert(a)
            assert item["name"] == alice_state and _unread(item) == [f"{session}/userStates/{me}"]
            await _set_unread(alice, session, False)
            item = await _upsert(a)
            assert item["name"] == alice_state and _unread(item) == []
            names = [e.data["item"]["name"] for e in a.events if e.event == "upsert"]
            assert names == [alice_state, alice_state], names

            # A closed session's unread flag leaves the state too.
            created = await alice.post(f"/v1/{task['name']}/sessions", json={"session": {}})
            assert created.status_code == 200, created.text
            second = created.json()["session"]["name"]
            await _upsert(a)  # the new session became alice's active tab
            await _set_unread(alice, second, True)
            assert _unread(await _upsert(a)) == [f"{second}/userStates/{me}"]
            closed = await alice.post(f"/v1/{second}:close", json={})
            assert closed.status_code == 200, closed.text
            item = await _upsert(a)
            assert item["name"] == alice_state and _unread(item) == []
            assert all(bob_state not in str(e.data) for e in a.events)
