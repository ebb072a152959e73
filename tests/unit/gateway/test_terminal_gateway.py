"""A task's terminal through the real gateway, as the workbench uses it: create the tty process, read
its output on the browser stream (`output:<process>`), type by POST `:writeInput`, resize by POST
`:resize`; and strangers (a member of another organization, a member of none) can neither read nor
write nor resize it."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

from tests.unit.gateway.harness import SseReader, running, sse
from tests.unit.gateway.test_cli import EVERYTHING

ACME = "organizations/acme"


def _output(reader: SseReader, topic: str) -> str:
    data = bytearray()
    for event in reader.events:
        if event.data.get("topic") != topic:
            continue
        chunks = [i["resource"] for i in event.data.get("items", [])] if event.event == "snapshot" else []
        if event.event == "upsert":
            chunks = [event.data["item"]["resource"]]
        for chunk in sorted(chunks, key=lambda c: int(c.get("offset", 0))):
            raw = base64.b64decode(chunk.get("data", ""))
            skip = len(data) - int(chunk.get("offset", 0))
            if skip < len(raw):
                data += raw[max(0, skip) :]
    return data.decode(errors="replace")


async def test_a_terminal_through_the_gateway_and_strangers_refused(tmp_path: Path) -> None:
    async with running(tmp_path, services=EVERYTHING) as h:
        alice = await h.signed_in("alice", member_of=[ACME])
        repository = await h.committed_repository(alice, ACME, "demo")
        ready = await h.ready_task(alice, ACME, repository)
        sandbox = ready["task"]["sandbox"]["name"]
        bob = await h.signed_in("bob", member_of=["organizations/beta"])
        mallory = await h.signed_in("mallory")

        created = await alice.post(
            f"/v1/{sandbox}/processes",
            json={
                "process": {"command": "bash", "args": ["--norc", "-i"], "tty": True},
                "terminalSize": {"rows": 24, "columns": 80},
                "requestId": "3c9f0f0e-terminal-gateway",
            },
        )
        assert created.status_code == 200, created.text
        process = created.json()["process"]["name"]
        topic = f"output:{process}"

        def keys(text: str) -> dict[str, str]:
            return {"data": base64.b64encode(text.encode()).decode()}

        async with sse(alice, f"/v1/stream?topic={topic}") as screen:
            await screen.until("snapshot")
            typed = await alice.post(f"/v1/{process}:writeInput", json=keys("echo gw-$((5*5)); stty size\n"))
            assert typed.status_code == 200, typed.text
            while "gw-25" not in _output(screen, topic) or "24 80" not in _output(screen, topic):
                await screen.next()

            for stranger in (bob, mallory):
                write = await stranger.post(f"/v1/{process}:writeInput", json=keys("echo pwned\n"))
                resize = await stranger.post(
                    f"/v1/{process}:resize", json={"terminalSize": {"rows": 5, "columns": 5}}
                )
                logs = await stranger.get(f"/v1/{process}/logs")
                for response in (write, resize, logs):
                    assert response.status_code == 403, response.text
                    assert response.json()["status"] == "PERMISSION_DENIED", response.text
                async with sse(stranger, f"/v1/stream?topic={topic}") as theirs:
                    error = await theirs.until("error")
                    assert (error.data["topic"], error.data["code"]) == (topic, "PERMISSION_DENIED")
                    assert (await theirs.until("subscribed")).data["topics"] == []

            resized = await alice.post(
                f"/v1/{process}:resize", json={"terminalSize": {"rows": 33, "columns": 99}}
            )
            assert resized.status_code == 200, resized.text
            bad = await alice.post(f"/v1/{process}:resize", json={"terminalSize": {"rows": 0, "columns": 99}})
            assert bad.status_code == 400 and bad.json()["status"] == "INVALID_ARGUMENT", bad.text
            await alice.post(f"/v1/{process}:writeInput", json=keys("stty size; exit 3\n"))
            while "33 99" not in _output(screen, topic):
                await screen.next()
        assert "pwned" not in _output(screen, topic)
        ended = await alice.post(f"/v1/{process}:writeInput", json=keys("x"))
        for _ in range(100):  # until the shell's exit is recorded
            if ended.status_code != 200:
                break
            await asyncio.sleep(0.05)
            ended = await alice.post(f"/v1/{process}:writeInput", json=keys("x"))
        assert ended.status_code == 400 and ended.json()["status"] == "FAILED_PRECONDITION", ended.text
