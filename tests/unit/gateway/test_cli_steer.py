"""foundryctl steering and shipping commands against the real services (organization, github-data,
sandbox, task; the gateway for sign-in), on a local organization of real git repositories:

- `tasks create --agent` picks the first session's agent;
- `stop` cancels the running turn (the transcript says `cancelled`), and says so when nothing runs;
- `push --wait` commits the agent's work and pushes the task's branch into the local repository;
- `publish-pr` on a local organization is refused in one readable line (no pull requests there).
"""

from __future__ import annotations

from pathlib import Path

from tests.helpers import assert_eventually
from tests.unit.gateway.harness import running
from tests.unit.gateway.test_cli import EVERYTHING, fails, make_git_repositories, ok, ok_json
from tests.unit.sandbox.gitrepo import git


async def test_agent_choice_stop_push_and_publish_against_the_real_services(tmp_path: Path) -> None:
    home = tmp_path / "home"
    src = make_git_repositories(tmp_path / "src", "demo")
    async with running(tmp_path, services=EVERYTHING) as h:
        await ok(h, home, "login", "--name", "alice", "--gateway", h.url)
        await ok(h, home, "orgs", "connect-local", str(src), "--id", "acme")

        async def synced() -> None:
            assert "\tdemo\t" in await ok(h, home, "repos", "list", "--org", "acme")

        await assert_eventually(synced, timeout=30, interval=0.2)
        create = ["tasks", "create", "--org", "acme", "--repo", "demo", "say hello", "--agent", "fake"]
        (task,) = await ok_json(h, home, *create)
        name = task["name"]
        assert [s.get("agent") for s in task["sessions"]] == ["agents/fake"], task["sessions"]

        async def logs_end_with(*lines: str) -> None:
            said = (await ok(h, home, "logs", name)).splitlines()
            assert said[-len(lines) :] == list(lines), said

        await assert_eventually(lambda: logs_end_with("── turn ended (end_turn)"), timeout=90, interval=0.3)
        assert "has no running turn to stop" in await fails(h, home, "stop", name)

        # stop: the running command is cancelled, the turn ends `cancelled`.
        await ok(h, home, "send", name, "$ sleep 30; echo never")
        running_tool = "tool: run sleep 30; echo never  $ sleep 30; echo never"
        await assert_eventually(lambda: logs_end_with(running_tool), timeout=30, interval=0.2)
        out = await ok(h, home, "stop", name)
        assert out.startswith(f"stopping the running turn of {name}/sessions/"), out
        await assert_eventually(lambda: logs_end_with("── turn ended (cancelled)"), timeout=30, interval=0.2)
        said = (await ok(h, home, "logs", name)).splitlines()
        assert "agent: never" not in said and said[-2].endswith("→ failed (cancelled)"), said

        # push --wait: the agent's file is committed and the branch lands in the local repository.
        await ok(h, home, "send", name, "write hello.txt: hi")
        await assert_eventually(
            lambda: logs_end_with("agent: wrote hello.txt", "── turn ended (end_turn)"),
            timeout=30,
            interval=0.2,
        )
        out = await ok(h, home, "push", name, "--wait")
        branch = task["branch"]
        assert out.startswith(f"pushed {branch} at "), out
        head = out.strip().rsplit(" ", 1)[-1]
        assert git("rev-parse", branch, cwd=src / "demo").startswith(head)
        assert git("show", f"{branch}:hello.txt", cwd=src / "demo") == "hi\n"

        # publish-pr: a local organization has no pull requests; one readable line.
        err = await fails(h, home, "publish-pr", name)
        assert "FAILED_PRECONDITION" in err and "no pull requests" in err, err
        assert f"`foundryctl push {name}` pushes the branch" in err, err
