"""A virtual task through the gateway (issue #13, item 7): a pull request on a branch no task owns
shows in the organization summary as a virtual task; the browser's first GET of it materializes it
(one task, however many first uses race), and a session can be created on it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from foundry.github_data.v1 import events_pb2 as gd_events
from foundry.github_data.v1 import pull_request_pb2
from google.protobuf import json_format

from tests.helpers import assert_eventually
from tests.unit.gateway.harness import running
from tests.unit.gateway.test_cli import EVERYTHING

ORG = "organizations/acme"


async def test_the_first_get_of_a_virtual_task_materializes_it_once(tmp_path: Path) -> None:
    async with running(tmp_path, services=EVERYTHING) as h:
        alice = await h.signed_in("alice", member_of=[ORG])
        repository = await h.add_repository(alice, ORG, "demo")
        summary = pull_request_pb2.PullRequestSummary(
            name=f"{repository}/pullRequests/9",
            number=9,
            repository=repository,
            repository_full_name="demo",
            title="Fix the flaky test",
            state=pull_request_pb2.PULL_REQUEST_STATE_OPEN,
            head_branch="fix/flaky",
            base_branch="main",
        )
        pr = json_format.ParseDict(json_format.MessageToDict(summary), pull_request_pb2.PullRequest())
        event = gd_events.PullRequestChanged(name=summary.name, version=1, pull_request=pr, summary=summary)
        await h.mesh.broker.publish(
            exchange="events",
            routing_key="github_data.pull_request.changed",
            body=event.SerializeToString(),
            message_id="pr-9-opened",
        )

        async def listed() -> str:
            response = await alice.get(f"/v1/{ORG}/summary")
            assert response.status_code == 200, response.text
            tasks = [
                t
                for t in response.json()["organizationSummary"].get("taskSummaries", [])
                if t.get("branch") == "fix/flaky"
            ]
            assert len(tasks) == 1, tasks
            return str(tasks[0]["name"])

        name = await assert_eventually(listed, timeout=15, interval=0.1)
        assert (await alice.get(f"/v1/{ORG}/tasks")).json().get("tasks", []) == []  # not a task yet

        first_uses: list[Any] = await asyncio.gather(*(alice.get(f"/v1/{name}") for _ in range(3)))
        assert [r.status_code for r in first_uses] == [200, 200, 200], [r.text for r in first_uses]
        task = first_uses[0].json()["task"]
        assert (
            task["name"] == name and task["branch"] == "fix/flaky" and task["prompt"] == "Fix the flaky test"
        )
        tasks = (await alice.get(f"/v1/{ORG}/tasks")).json()["tasks"]
        assert [t["name"] for t in tasks] == [name]

        created = await alice.post(f"/v1/{name}/sessions", json={"session": {"displayName": "review"}})
        assert created.status_code == 200, created.text
        assert created.json()["session"]["displayName"] == "review"

        missing = await alice.get(f"/v1/{ORG}/tasks/0123456789abcdef0123456789abcdef")
        assert missing.status_code == 404, missing.text
