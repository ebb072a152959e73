"""Permission requests through the gateway's JSON API (POST …/permissionRequests/*:answer): the
organization's policy set with PATCH, a waiting request visible in the session's events, strangers
(signed in but no member; a member of another organization) refused with 403 and nothing recorded,
and the request still waiting and answerable through a new gateway after the first one stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from gateway.app import GatewayComponent
from tests.helpers import assert_eventually
from tests.unit.gateway.harness import running
from tests.unit.gateway.test_cli import EVERYTHING

ACME = "organizations/acme"


async def _events(client: httpx.AsyncClient, sandbox_session: str) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/{sandbox_session}/events")
    assert response.status_code == 200, response.text
    return list(response.json().get("sessionEvents", []))


async def test_answer_through_the_gateway_refuses_strangers_and_survives_a_gateway_restart(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, services=EVERYTHING) as h:
        alice = await h.signed_in("alice", member_of=[ACME])
        repository = await h.committed_repository(alice, ACME, "demo")
        policy = await alice.patch(
            f"/v1/{ACME}?updateMask=permissionPolicy", json={"permissionPolicy": "PERMISSION_POLICY_ASK"}
        )
        assert policy.status_code == 200, policy.text
        assert policy.json()["organization"]["permissionPolicy"] == "PERMISSION_POLICY_ASK"
        ready = await h.ready_task(alice, ACME, repository)
        session, sandbox_session = ready["session"]["name"], ready["session"]["sandboxSession"]
        sent = await alice.post(
            f"/v1/{session}:sendMessage", json={"text": "write GW.md: through the gateway"}
        )
        assert sent.status_code == 200, sent.text

        async def asked() -> str:
            requests = [
                e for e in await _events(alice, sandbox_session) if e["kind"].endswith("PERMISSION_REQUEST")
            ]
            assert requests and requests[-1]["payload"].get("requestId"), requests
            return str(requests[-1]["payload"]["requestId"])

        request_id = await assert_eventually(asked, timeout=30, interval=0.1)
        answer_url = f"/v1/{session}/permissionRequests/{request_id}:answer"
        before = await _events(alice, sandbox_session)

        carol = await h.signed_in("carol")  # no member of acme
        bob = await h.signed_in("bob", member_of=["organizations/beta"])  # another organization's
        for stranger in (carol, bob):
            refused = await stranger.post(answer_url, json={"outcome": "PERMISSION_OUTCOME_ALLOW_ONCE"})
            assert refused.status_code == 403, refused.text
        bad = await alice.post(answer_url, json={"outcome": "PERMISSION_OUTCOME_CANCELLED"})
        assert bad.status_code == 400, bad.text
        assert await _events(alice, sandbox_session) == before

        # The gateway stops; a new one (same settings, so the same cookies) finds the request waiting.
        await h.gateway.begin_drain()
        await h.gateway.wait_idle(5)
        await h.gateway.close()
        gateway = GatewayComponent(h.settings, port=0)
        await gateway.start()
        h.gateway = gateway  # the harness drains and closes it at the end
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{gateway.port}",
            cookies=alice.cookies,
            headers={"x-csrf-token": alice.headers["x-csrf-token"]},
            timeout=10,
        ) as again:
            waiting = await _events(again, sandbox_session)
            assert waiting == before  # still waiting: no answer, no further agent output
            answered = await again.post(answer_url, json={"outcome": "PERMISSION_OUTCOME_ALLOW_ONCE"})
            assert answered.status_code == 200, answered.text
            body = answered.json()
            assert body["permissionRequest"]["state"] == "PERMISSION_REQUEST_STATE_ANSWERED"
            assert body["permissionRequest"]["delivered"] is True

            async def wrote() -> None:
                events = await _events(again, sandbox_session)
                chunks = [e.get("text") for e in events if e["kind"].endswith("AGENT_MESSAGE_CHUNK")]
                assert chunks[-1] == "wrote GW.md", chunks

            await assert_eventually(wrote, timeout=30, interval=0.1)
            twice = await again.post(answer_url, json={"outcome": "PERMISSION_OUTCOME_REJECT"})
            assert twice.status_code == 400, twice.text  # FAILED_PRECONDITION
            assert "already answered" in twice.text
