"""foundryctl's human output against the real services (organization, github-data, sandbox, task and
the gateway for sign-in), as a person reads it:

- empty results say so and what to do (`orgs list`, `tasks list`), in text mode only;
- `tasks list` shows statuses in words (`idle`), never enum names;
- `watch task` prints the task once, then one line per change naming what changed (status, title);
  `watch org` prints the summary's repositories, sync state and tasks in words;
- `logs TASK` prints what was said in the task's first session as a conversation, and `logs -f`
  keeps printing as the agent works (tool call, output, exit code, turn end).
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from tests.helpers import assert_eventually
from tests.unit.gateway.harness import Harness, running
from tests.unit.gateway.test_cli import EVERYTHING, ROOT, _env, fails, make_git_repositories, ok, ok_json


class Lines:
    """A running human-mode foundryctl command: read its output line by line, then interrupt it."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def next(self, seconds: float = 30) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), seconds)
        if not raw:
            assert self.proc.stderr is not None
            err = (await self.proc.stderr.read()).decode()
            raise AssertionError(f"ended (exit {await self.proc.wait()}) after {self.lines}: {err}")
        line = raw.decode().rstrip("\n")
        self.lines.append(line)
        return line

    async def until(self, match: Callable[[str], bool], seconds: float = 60) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            try:
                line = await self.next(max(0.1, deadline - loop.time()))
            except TimeoutError:
                raise AssertionError(f"no matching line within {seconds} s; got {self.lines}") from None
            if match(line):
                return line

    async def interrupt(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(self.proc.communicate(), 30)
        self.lines.extend(out.decode().splitlines())
        return await self.proc.wait(), err.decode()


@asynccontextmanager
async def human(h: Harness, home: Path, *args: str) -> AsyncIterator[Lines]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli",
        *args,
        cwd=ROOT,
        env=_env(h, home, None),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield Lines(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def status_became(status: str) -> Callable[[str], bool]:
    """A `watch task` change line in which the task's status became `status`."""
    return lambda line: re.search(rf"(: |; )status: [^;]+ → {re.escape(status)}(;|$)", line) is not None


FIRST_TURN = [
    "you: say hello",
    "thinking: thinking about: say hello",
    "plan: [in progress] answer the prompt",
    "agent: echo: say hello",
    "── turn ended (end_turn)",
]


async def test_empty_results_statuses_changes_and_transcript_read_as_words(tmp_path: Path) -> None:
    home = tmp_path / "home"
    src = make_git_repositories(tmp_path / "src", "demo")
    async with running(tmp_path, services=EVERYTHING) as h:
        await ok(h, home, "login", "--name", "alice", "--gateway", h.url)

        # Nothing yet: the human output says so and how to go on; JSON stays empty.
        out = await ok(h, home, "orgs", "list")
        assert out.startswith("No organizations. Connect one with `foundryctl orgs connect-local DIR`"), out
        assert await ok_json(h, home, "orgs", "list") == []
        await ok(h, home, "orgs", "connect-local", str(src), "--id", "acme", "--name", "Acme")
        out = await ok(h, home, "tasks", "list", "--org", "acme")
        assert out.startswith("No tasks in organizations/acme") and "tasks create --org acme" in out, out
        assert await ok_json(h, home, "tasks", "list", "--org", "acme") == []

        async def synced() -> None:
            assert "\tdemo\t" in await ok(h, home, "repos", "list", "--org", "acme")

        await assert_eventually(synced, timeout=30, interval=0.2)
        create = ["tasks", "create", "--org", "acme", "--repo", "demo", "say hello", "--title", "Hello"]
        (task,) = await ok_json(h, home, *create)
        name = task["name"]
        task_id = name.rsplit("/", 1)[-1]

        async with human(h, home, "watch", "task", task_id, "--org", "acme") as watch:
            # The snapshot: the task once, its fields in words.
            first = await watch.next()
            assert first.startswith(f'task {name}: title "Hello", status '), first

            # `logs`: the first turn (the task's prompt) as a conversation, once it has run.
            async def first_turn_said() -> None:
                assert (await ok(h, home, "logs", task_id, "--org", "acme")).splitlines() == FIRST_TURN

            await assert_eventually(first_turn_said, timeout=90, interval=0.3)
            events = await ok_json(h, home, "logs", name)
            assert events[0]["kind"] == "SESSION_EVENT_KIND_USER_MESSAGE" and events[0]["text"] == "say hello"
            assert events[-1]["kind"] == "SESSION_EVENT_KIND_TURN_COMPLETED"

            # watch task: changes name the field, old and new value in words. The first turn can
            # end before the watch opens; the snapshot then already says idle (the change lines
            # are checked again below, for a message sent while the watch is open).
            if not re.search(r", status idle(,|$)", first):
                await watch.until(status_became("idle"), seconds=60)
            (line,) = (await ok(h, home, "tasks", "list", "--org", "acme")).splitlines()
            assert line.split("\t")[:2] == [name, "idle"] and line.endswith("\tHello"), line

            browser = await h.signed_in("alice")  # the CLI's user, in the workbench
            renamed = await browser.post(f"/v1/{name}:rename", json={"title": "Say hello"})
            assert renamed.status_code == 200, renamed.text
            # (Lines of the first turn's status changes may come first: the watch can lag behind.)
            assert await watch.until(lambda line: line.startswith(f"{name}: title:")) == (
                f'{name}: title: "Hello" → "Say hello"'
            )

            # logs -f: the log so far, then the next turn as it happens.
            async with human(h, home, "logs", "-f", task_id, "--org", "acme") as logs:
                for expected in FIRST_TURN:
                    assert await logs.next() == expected
                await ok(h, home, "send", task_id, "--org", "acme", "$ sleep 1; echo done; exit 3")
                assert await logs.next() == "you: $ sleep 1; echo done; exit 3"
                tool = "tool: run sleep 1; echo done; exit 3"
                assert await logs.next() == f"{tool}  $ sleep 1; echo done; exit 3"
                assert await logs.next() == "agent: done"
                assert await logs.next() == f"{tool} → failed (exit code 3)"
                assert await logs.next() == "── turn ended (end_turn)"
                code, err = await logs.interrupt()
                assert code == 130 and "Traceback" not in err, err

            await watch.until(status_became("running"))
            await watch.until(status_became("idle"))
            code, err = await watch.interrupt()
            assert code == 130 and "Traceback" not in err, err
            text = "\n".join(watch.lines)
            assert "TASK_STATUS_" not in text and "upsert" not in text, text

        # The organization's summary follows task events in the background: once it has the new
        # title, the org watch's snapshot shows it.
        async def renamed_in_summary() -> None:
            response = await browser.get("/v1/organizations/acme/summary")
            assert response.status_code == 200, response.text
            tasks = response.json()["organizationSummary"].get("taskSummaries", [])
            assert [t.get("title") for t in tasks if t["name"] == name] == ["Say hello"], tasks

        await assert_eventually(renamed_in_summary, timeout=15, interval=0.1)

        # watch org: each summary item once, as words (repository, sync state, the task).
        async with human(h, home, "watch", "org", "acme") as org_watch:
            line = await org_watch.until(lambda line: line.startswith(f"task {name}: "))
            assert 'title "Say hello", status ' in line and "TASK_STATUS_" not in line, line
            assert any(
                re.fullmatch(
                    r"repository organizations/acme/repositories/\S+: full name demo, tasks \d", seen
                )
                for seen in org_watch.lines
            ), org_watch.lines
            code, err = await org_watch.interrupt()
            assert code == 130 and "Traceback" not in err, err

        err = await fails(h, home, "logs", "nosuch", "--org", "acme")
        assert "NOT_FOUND" in err, err
