"""foundryctl and permission requests against the real services: `orgs permissions ORG ask` makes
the organization's agents ask, `logs` shows the waiting request with its id, `answer … allow-once`
lets the agent go on (the file is written), `answer … reject` refuses, and a second answer or a bad
request id fails in one readable line.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers import assert_eventually
from tests.unit.gateway.harness import running
from tests.unit.gateway.test_cli import EVERYTHING, fails, make_git_repositories, ok, ok_json


async def test_ask_policy_logs_and_answers_from_the_command_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    src = make_git_repositories(tmp_path / "src", "demo")
    async with running(tmp_path, services=EVERYTHING) as h:
        await ok(h, home, "login", "--name", "alice", "--gateway", h.url)
        await ok(h, home, "orgs", "connect-local", str(src), "--id", "acme")
        out = await ok(h, home, "orgs", "permissions", "acme", "ask")
        assert out.strip() == "organizations/acme: agents' permission requests are now answered: ask", out

        async def synced() -> None:
            assert "\tdemo\t" in await ok(h, home, "repos", "list", "--org", "acme")

        await assert_eventually(synced, timeout=30, interval=0.2)
        create = ["tasks", "create", "--org", "acme", "--repo", "demo", "write NOTES.md: run make test"]
        (task,) = await ok_json(h, home, *create)
        name = task["name"]

        async def asked(title: str) -> str:
            said = (await ok(h, home, "logs", name)).splitlines()
            found = re.fullmatch(rf"permission asked: {re.escape(title)} \(request ([0-9a-f]+)\)", said[-1])
            assert found, said
            return found.group(1)

        request = await assert_eventually(lambda: asked("write NOTES.md"), timeout=90, interval=0.3)
        out = await ok(h, home, "answer", name, request, "allow-once")
        assert out.strip() == "answered allow-once: write NOTES.md", out

        async def logs_end_with(*lines: str) -> None:
            said = (await ok(h, home, "logs", name)).splitlines()
            assert said[-len(lines) :] == list(lines), said

        await assert_eventually(
            lambda: logs_end_with("agent: wrote NOTES.md", "── turn ended (end_turn)"),
            timeout=30,
            interval=0.2,
        )
        said = await ok(h, home, "logs", name)
        assert "permission answered: allow_once: allow" in said, said
        err = await fails(h, home, "answer", name, request, "reject")
        assert "FAILED_PRECONDITION" in err and "already answered" in err, err
        err = await fails(h, home, "answer", name, "nosuchrequest", "allow-once")
        assert "NOT_FOUND" in err, err

        await ok(h, home, "send", name, "write SECRET.md: no")
        second = await assert_eventually(lambda: asked("write SECRET.md"), timeout=30, interval=0.2)
        await ok(h, home, "answer", name, second, "reject")
        await assert_eventually(
            lambda: logs_end_with(
                "agent: permission to write SECRET.md was refused", "── turn ended (end_turn)"
            ),
            timeout=30,
            interval=0.2,
        )
