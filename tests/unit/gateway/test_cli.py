"""foundryctl as a real process against the real services (and the real gateway for sign-in).

- `login --name` goes through the gateway's dev sign-in (`POST /v1/auth/token {login}`); `login --token`
  takes a token the signed-in browser session minted (the workbench's Account page: a CSRF-checked
  cookie POST to the same route), checks it with the services and stores it; this is the only way in
  when the gateway offers GitHub sign-in alone.
- Every other command runs against the organization, github-data, sandbox and task services: a local
  organization of real git repositories made in the test, a task created, watched until it is ready,
  sent a message, archived; `watch` streams are read line by line while they run, then interrupted.
- Errors (unknown or malformed organization, unknown repository, refused token) print one
  `foundryctl: …` line and exit 1, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from services.platform.settings import ServiceName
from tests.helpers import assert_eventually
from tests.unit.gateway.harness import Harness, running
from tests.unit.gateway.test_http_api import fake_github
from tests.unit.sandbox.gitrepo import git

ROOT = Path(__file__).resolve().parents[3]
EVERYTHING: tuple[ServiceName, ...] = ("organization", "github_data", "sandbox", "task")


def _env(h: Harness, home: Path, token: str | None) -> dict[str, str]:
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(home),
        "GRPC_VERBOSITY": "ERROR",
        "FOUNDRY_BIND_HOST": "127.0.0.1",
        **{f"FOUNDRY_{s.upper()}_PORT": str(h.settings.port_of(s)) for s in EVERYTHING},
    }
    for service in EVERYTHING:
        env.pop(f"FOUNDRY_{service.upper()}_TARGET", None)
    env.pop("FOUNDRY_TOKEN", None)
    if token is not None:
        env["FOUNDRY_TOKEN"] = token
    return env


async def foundryctl(
    h: Harness, home: Path, *args: str, token: str | None = None, stdin: str | None = None
) -> tuple[int, str, str]:
    """Run `foundryctl ARGS` to completion; (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli",
        *args,
        cwd=ROOT,
        env=_env(h, home, token),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin is not None else None), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def ok(h: Harness, home: Path, *args: str, **kwargs: Any) -> str:
    code, out, err = await foundryctl(h, home, *args, **kwargs)
    assert code == 0, f"foundryctl {' '.join(args)} → {code}\n{err}"
    assert "Traceback" not in err, err
    return out


async def ok_json(h: Harness, home: Path, *args: str, **kwargs: Any) -> list[dict[str, Any]]:
    """`foundryctl -o json ARGS`: one JSON object per line."""
    out = await ok(h, home, "-o", "json", *args, **kwargs)
    return [json.loads(line) for line in out.splitlines()]


async def fails(h: Harness, home: Path, *args: str, **kwargs: Any) -> str:
    """Run a command that must fail cleanly; returns its stderr."""
    code, out, err = await foundryctl(h, home, *args, **kwargs)
    assert code == 1, f"foundryctl {' '.join(args)} → {code}\n{out}\n{err}"
    assert "Traceback" not in err and err.startswith("foundryctl: "), err
    return err


class Watch:
    """A running `foundryctl -o json watch …`: read its events as they arrive, then interrupt it."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []

    async def next(self, seconds: float = 30) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), seconds)
        if not line:
            assert self.proc.stderr is not None
            err = (await self.proc.stderr.read()).decode()
            raise AssertionError(f"watch ended (exit {await self.proc.wait()}): {err}")
        event: dict[str, Any] = json.loads(line)
        self.events.append(event)
        return event

    async def until(self, match: Callable[[dict[str, Any]], bool], seconds: float = 60) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            event = await self.next(max(0.1, deadline - loop.time()))
            if match(event):
                return event

    async def interrupt(self) -> tuple[int, str]:
        """Ctrl-C: the watch stops quietly (exit 130, no traceback)."""
        self.proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(self.proc.communicate(), 30)
        return await self.proc.wait(), err.decode()


@asynccontextmanager
async def watching(h: Harness, home: Path, *args: str) -> AsyncIterator[Watch]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli",
        "-o",
        "json",
        "watch",
        *args,
        cwd=ROOT,
        env=_env(h, home, None),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield Watch(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def make_git_repositories(root: Path, *names: str) -> Path:
    """`root/<name>` for each name: a real git working tree on `main` with one commit."""
    for name in names:
        repo = root / name
        repo.mkdir(parents=True)
        git("init", "-q", "-b", "main", cwd=repo)
        (repo / "README.md").write_text(f"# {name}\n")
        git("add", ".", cwd=repo)
        git("commit", "-q", "-m", "initial", cwd=repo)
    return root


def kind(event: dict[str, Any]) -> str:
    return str(event["kind"]).removeprefix("WATCH_EVENT_KIND_")


def names(event: dict[str, Any]) -> list[str]:
    return [item["name"] for item in event.get("items", [])]


def resource(event: dict[str, Any], name: str) -> dict[str, Any] | None:
    for item in event.get("items", []):
        if item["name"] == name:
            return item.get("resource")  # type: ignore[no-any-return]
    return None


async def csrf_browser_token(h: Harness, browser: Any) -> dict[str, Any]:
    """What the workbench's Account page does: POST /v1/auth/token with the cookies and CSRF header."""
    response = await browser.post("/v1/auth/token", json={})
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    return dict(response.json())


class TestLogin:
    async def test_login_by_name_stores_a_token_that_later_commands_use(self, tmp_path: Path) -> None:
        async with running(tmp_path) as h:
            await h.signed_in("dave", member_of=["organizations/acme"])  # the same user as the CLI's
            await h.signed_in("erin", member_of=["organizations/beta"])
            (answer,) = await ok_json(h, tmp_path, "login", "--name", "dave", "--gateway", h.url)
            assert (answer["user"], answer["login"]) == ("users/local-dave", "dave")
            token_file = tmp_path / "foundry" / "token"
            assert token_file.stat().st_mode & 0o077 == 0
            orgs = await ok_json(h, tmp_path, "orgs", "list")
            # The service saw dave: his organization, not erin's.
            assert [o["name"] for o in orgs] == ["organizations/acme"]

    async def test_token_from_a_github_session_when_dev_sign_in_is_off(self, tmp_path: Path) -> None:
        async with fake_github() as (github_url, _):
            overrides = {
                "gateway": {"dev_sign_in": False},
                "github": {
                    "client_id": "cid",
                    "client_secret": "csecret",
                    "oauth_authorize_url": f"{github_url}/login/oauth/authorize",
                    "oauth_token_url": f"{github_url}/login/oauth/access_token",
                    "api_url": f"{github_url}/api",
                },
            }
            async with running(tmp_path, overrides=overrides) as h:
                err = await fails(h, tmp_path, "login", "--name", "octo", "--gateway", h.url)
                assert "dev sign-in is disabled" in err and "login --token" in err
                browser = await h.browser()
                start = await browser.get("/v1/auth/github/start?redirect=/")
                state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
                done = await browser.get(f"/v1/auth/github/callback?code=good-code&state={state}")
                assert done.status_code == 302, done.text
                await h.join(browser, "organizations/octo-org")

                # The session's cookies without the CSRF header: refused (a cross-site form cannot mint).
                forged = await browser.post("/v1/auth/token", json={}, headers={"x-csrf-token": ""})
                assert forged.status_code == 403, forged.text
                minted = await csrf_browser_token(h, browser)
                assert (minted["user"], minted["login"]) == ("users/42", "octo")

                # `--token -` reads it from stdin; it is checked by the services, then stored.
                (answer,) = await ok_json(h, tmp_path, "login", "--token", "-", stdin=minted["token"] + "\n")
                assert (answer["user"], answer["login"]) == ("users/42", "octo")
                stored, made = (datetime.fromisoformat(t["expireTime"]) for t in (answer, minted))
                assert abs((stored - made).total_seconds()) < 5
                assert timedelta(hours=11, minutes=59) < made - datetime.now(UTC) <= timedelta(hours=12)
                assert (tmp_path / "foundry" / "token").read_text().strip() == minted["token"]
                assert (tmp_path / "foundry" / "token").stat().st_mode & 0o077 == 0
                orgs = await ok_json(h, tmp_path, "orgs", "list")
                assert "organizations/octo-org" in [o["name"] for o in orgs]

                # The same with the token on the command line, in human output.
                out = await ok(h, tmp_path / "other", "login", "--token", minted["token"])
                assert out.startswith("signed in as octo until ") and "token in" in out

                # Signed out, the browser session mints no more tokens.
                assert (await browser.post("/v1/auth/signOut")).status_code == 200
                after = await browser.post("/v1/auth/token", json={})
                assert after.status_code == 401, after.text

    async def test_refused_and_malformed_tokens_are_not_stored(self, tmp_path: Path) -> None:
        async with running(tmp_path) as h:
            forged = await fails(h, tmp_path, "login", "--token", "eyJzdWIiOiJ1c2VyLzEifQ.deadbeef")
            assert "refused this token" in forged
            assert "not a foundryctl token" in await fails(h, tmp_path, "login", "--token", "garbage")
            assert "no token given" in await fails(h, tmp_path, "login", "--token", "-", stdin="\n")
            assert not (tmp_path / "foundry" / "token").exists()

    async def test_without_token_commands_fail_with_a_hint(self, tmp_path: Path) -> None:
        async with running(tmp_path) as h:
            err = await fails(h, tmp_path, "orgs", "list")
            assert "foundryctl login --token" in err

    async def test_forged_token_is_rejected_by_the_service(self, tmp_path: Path) -> None:
        async with running(tmp_path) as h:
            err = await fails(h, tmp_path, "orgs", "list", token="e30.deadbeef")
            assert "UNAUTHENTICATED" in err


class TestCommands:
    async def test_every_command_against_the_real_services(self, tmp_path: Path) -> None:
        home = tmp_path / "home"
        src = make_git_repositories(tmp_path / "src", "demo", "tools")
        async with running(tmp_path, services=EVERYTHING) as h:
            await ok(h, home, "login", "--name", "alice", "--gateway", h.url)

            # orgs connect-local: a directory of real git repositories becomes organization acme.
            connect = ["orgs", "connect-local", str(src), "--id", "acme", "--name", "Acme"]
            (org,) = await ok_json(h, home, *connect)
            assert (org["name"], org["displayName"]) == ("organizations/acme", "Acme")

            # orgs list: JSON, and the human table.
            assert [o["name"] for o in await ok_json(h, home, "orgs", "list")] == ["organizations/acme"]
            assert (await ok(h, home, "orgs", "list")).splitlines() == ["organizations/acme\tAcme"]

            # repos list, once the first sync found both repositories.
            async def synced() -> list[dict[str, Any]]:
                repos = await ok_json(h, home, "repos", "list", "--org", "acme")
                assert sorted(r["fullName"] for r in repos) == ["demo", "tools"], repos
                return repos

            repos: list[dict[str, Any]] = await assert_eventually(synced, timeout=30, interval=0.2)
            demo = next(r["name"] for r in repos if r["fullName"] == "demo")

            async with watching(h, home, "org", "acme") as org_watch:
                first = await org_watch.next()
                assert kind(first) in ("SNAPSHOT", "SNAPSHOT_END"), first

                # tasks create (by the repository's directory name), seen by the organization watch.
                create = ["tasks", "create", "--org", "acme", "--repo", "demo", "add a hello file"]
                (task,) = await ok_json(h, home, *create, "--title", "Hello")
                name = task["name"]
                assert name.startswith("organizations/acme/tasks/") and task["repository"] == demo
                assert task["title"] == "Hello" and task["branch"]
                change = await org_watch.until(lambda e: kind(e) == "UPSERT" and name in names(e))
                assert resource(change, name) is not None
                code, err = await org_watch.interrupt()
                assert code == 130 and "Traceback" not in err, err
            task_id = name.rsplit("/", 1)[-1]

            # watch task: the snapshot, then changes until the task is idle and its session has
            # answered the prompt (its first turn).
            def ready(event: dict[str, Any]) -> bool:
                current = resource(event, name)
                return bool(
                    current
                    and current.get("status") == "TASK_STATUS_IDLE"
                    and current.get("sessions", [{}])[0].get("status") == "SESSION_STATUS_IDLE"
                )

            async with watching(h, home, "task", task_id, "--org", "acme") as task_watch:
                first = await task_watch.next()
                assert kind(first) == "SNAPSHOT" and name in names(first), first
                # The first turn can end before the watch opens (the snapshot shows it answered) or
                # after (an UPSERT brings the answer): on a busy machine the fake agent is that fast.
                if not ready(first):
                    change = await task_watch.until(ready, seconds=90)
                    assert kind(change) == "UPSERT", change
                code, err = await task_watch.interrupt()
                assert code == 130 and "Traceback" not in err, err

            # tasks list: JSON and human.
            (listed,) = await ok_json(h, home, "tasks", "list", "--org", "acme")
            assert (listed["name"], listed["status"]) == (name, "TASK_STATUS_IDLE")
            (line,) = (await ok(h, home, "tasks", "list", "--org", "organizations/acme")).splitlines()
            assert line.split("\t")[:2] == [name, "idle"] and line.endswith("\tHello")

            # send: to the task's open session.
            (sent,) = await ok_json(h, home, "send", task_id, "--org", "acme", "write hello.txt: hi")
            assert sent["session"]["name"].startswith(f"{name}/sessions/") and sent["message"]
            assert sent["session"]["status"] == "SESSION_STATUS_RUNNING"

            # tasks archive: then it leaves the default list, and stays in --all.
            (archived,) = await ok_json(h, home, "tasks", "archive", name)
            assert archived["name"] == name
            assert archived["status"].startswith("TASK_STATUS_ARCHIVE"), archived  # under way or done

            async def gone() -> None:
                assert await ok_json(h, home, "tasks", "list", "--org", "acme") == []

            await assert_eventually(gone, timeout=30, interval=0.2)
            everything = await ok_json(h, home, "tasks", "list", "--org", "acme", "--all")
            assert [t["name"] for t in everything] == [name]

            # Errors: one line, exit 1, no traceback.
            err = await fails(h, home, "tasks", "list", "--org", "nosuch")
            assert "PERMISSION_DENIED" in err and "organizations/nosuch" in err
            assert "INVALID_ARGUMENT" in await fails(h, home, "tasks", "list", "--org", "Bad Org!")
            assert "nosuch" in await fails(h, home, "watch", "org", "nosuch")
            err = await fails(h, home, "tasks", "create", "--org", "acme", "--repo", "nope", "x")
            assert "'nope'" in err and "demo, tools" in err
            assert "--org" in await fails(h, home, "tasks", "archive", task_id)
