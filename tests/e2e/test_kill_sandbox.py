"""kill -9 of the sandbox service mid-turn, driven through the gateway (issue #13, item 6), on both
shapes: the mesh (one process per service plus the gateway, on a private PostgreSQL and RabbitMQ;
the sandbox replica is killed) and the embedded default (one process, SQLite, in-process broker;
the whole process is killed, as a crash of `make run` would).

A task's prompt runs as its first turn; then a message starts a long command and a second message
is queued behind it; the sandbox service is SIGKILLed while the command runs and started again.

Behaviour asserted, all read through the gateway's JSON API:
- the running turn ends INTERRUPTED, not in error: the transcript has a `turn_interrupted` NOTICE
  and no ERROR, the session's status is IDLE with a `notice` saying what happened, the task's
  session summary carries the same notice, and the task is IDLE;
- the queued message then runs on the restarted agent, which resumed the session with
  `session/load` (a `session_loaded` NOTICE), and remembers the prompts from before the kill;
- the next message is accepted and runs, and clears the notice.
On the mesh shape a Chromium page shows the task across the kill: without a reload it shows the
interruption notice and the queued message's answer, and its composer sends the next message.

Figures are printed (run with -s): time from the restarted replica being ready until the session
shows the interruption, and until the queued message's answer is in the transcript.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from services.sandbox.usecases.turns import RESTARTED
from tests.e2e.procs.cluster import Cluster
from tests.e2e.procs.world import make_repos
from tests.e2e.test_browser import CHROMIUM, CHROMIUM_ARGS
from tests.e2e.test_gateway_mesh import BrowserClient
from tests.helpers import assert_eventually, make_pg_database
from tests.helpers.procs import MeshPorts, spawn, stop, wait_healthy

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


async def test_kill_9_of_the_sandbox_service_mid_turn_interrupts_the_turn_and_the_session_goes_on(
    tmp_path: Path, amqp_url: str
) -> None:
    async with make_pg_database() as db_url:
        cluster = Cluster(
            tmp_path,
            db_url,
            amqp_url,
            replicas={"organization": 1, "github_data": 1, "sandbox": 1, "task": 1},
            gateway=True,
        )
        sandbox = cluster["sandbox-0"]

        async def kill_and_restart() -> None:
            assert sandbox.proc is not None
            sandbox.proc.kill()  # SIGKILL: no drain, no close; the agent loses its parent
            await sandbox.wait_exit(10)
            sandbox.start()
            await sandbox.wait_ready()

        try:
            await cluster.start()
            url = f"http://{cluster['gateway-0'].address}"
            await _scenario(
                url, make_repos(tmp_path), kill_and_restart, "mesh", shots=tmp_path / "screenshots"
            )
        except BaseException:
            print(cluster.dump_logs())
            raise
        finally:
            await cluster.close()


async def test_kill_9_of_the_embedded_mesh_mid_turn_interrupts_the_turn_and_the_session_goes_on(
    tmp_path: Path,
) -> None:
    ports = MeshPorts()
    env = {
        **ports.env(),
        "FOUNDRY_DATA_DIR": str(tmp_path / "data"),
        "FOUNDRY_LOG_FORMAT": "console",
        "FOUNDRY_GATEWAY__PUBLIC_URL": f"http://127.0.0.1:{ports.gateway}",
    }
    logs = [tmp_path / "embedded-1.log"]
    procs = [spawn("services.embedded", env, log_path=logs[0])]

    async def kill_and_restart() -> None:
        procs[-1].kill()  # SIGKILL of the one process: every service, broker and agent parent
        await asyncio.to_thread(procs[-1].wait, 10)
        logs.append(tmp_path / f"embedded-{len(logs) + 1}.log")
        procs.append(spawn("services.embedded", env, log_path=logs[-1]))
        await wait_healthy(ports, procs[-1])

    try:
        await wait_healthy(ports, procs[0])
        await _scenario(
            f"http://127.0.0.1:{ports.gateway}", make_repos(tmp_path), kill_and_restart, "embedded"
        )
    except BaseException:
        print("\n".join(log.read_text(errors="replace")[-4000:] for log in logs))
        raise
    finally:
        for proc in procs:
            stop(proc)


async def _scenario(
    url: str,
    repos: Path,
    kill_and_restart: Callable[[], Awaitable[None]],
    shape: str,
    *,
    shots: Path | None = None,
) -> None:
    """The steps through the JSON API; with `shots`, a Chromium page shows the task throughout and
    is checked (and photographed into `shots`) after the restart."""
    browser = await BrowserClient(url).sign_in("alice")
    async with contextlib.AsyncExitStack() as stack:
        page = None
        if shots is not None and (shutil.which("chromium") or os.environ.get("CI")):
            page = await stack.enter_async_context(_chromium_page(url))
            await asyncio.to_thread(shots.mkdir, exist_ok=True)
        try:
            await _steps(browser, repos, kill_and_restart, shape, page, shots)
        finally:
            await browser.close()


@contextlib.asynccontextmanager
async def _chromium_page(url: str) -> AsyncIterator[Any]:
    """A Chromium page signed in as alice (the same user as the API client)."""
    from playwright.async_api import async_playwright, expect

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = await chromium.new_page()
            await page.goto(url)
            await page.get_by_test_id("signin-login").fill("alice")
            await page.get_by_test_id("signin-submit").click()
            await expect(page.get_by_test_id("whoami")).to_have_text("alice")
            yield page
        finally:
            await chromium.close()


async def _page_went_on(page: Any, shots: Path) -> None:
    """The open task page, without a reload, shows the interruption and the queued message's answer,
    and sends the next message from its composer."""
    from playwright.async_api import expect

    await expect(page.get_by_test_id("connection")).to_have_text("live")
    await expect(page.get_by_test_id("session-notice")).to_contain_text(RESTARTED)
    await expect(page.get_by_test_id("agent-message").last).to_have_text("recall: $ echo first | $ sleep 20")
    await page.screenshot(path=str(shots / "kill-9-sandbox-went-on.png"))
    await page.get_by_test_id("composer").fill("$ echo after")
    await page.get_by_test_id("composer").press("Enter")
    await expect(page.get_by_test_id("agent-message").last).to_have_text("after")
    await expect(page.get_by_test_id("session-notice")).to_have_count(0)
    # The sidebar (the organization's summary projection, fed by events) agrees with the task page.
    await expect(page.locator("nav.sidebar li.active .pill")).to_have_text("idle")


async def _get(browser: BrowserClient, path: str) -> Any:
    response = await browser.http.get(f"/v1/{path}")
    assert response.status_code == 200, response.text
    return response.json()


async def _post(browser: BrowserClient, path: str, body: dict[str, Any]) -> Any:
    response = await browser.http.post(f"/v1/{path}", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _kinds(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("kind") == f"SESSION_EVENT_KIND_{kind}"]


async def _steps(
    browser: BrowserClient,
    repos: Path,
    kill_and_restart: Callable[[], Awaitable[None]],
    shape: str,
    page: Any = None,
    shots: Path | None = None,
) -> None:
    org = await browser.connect_local(repos)
    repository = await browser.repository(org)
    created = await _post(
        browser, f"{org}/tasks", {"task": {"repository": repository, "prompt": "$ echo first"}}
    )
    task = created["task"]["name"]

    async def idle_session() -> dict[str, Any]:
        got = (await _get(browser, task))["task"]
        assert got["status"] == "TASK_STATUS_IDLE", got
        session = (await _get(browser, got["sessions"][0]["name"]))["session"]
        assert session["status"] == "SESSION_STATUS_IDLE" and session.get("sandboxSession"), session
        return dict(session)

    session = await assert_eventually(idle_session, timeout=90, interval=0.3)
    name, transcript = session["name"], f"{session['sandboxSession']}/events"
    if page is not None:  # the page stays open across the kill: its streams must resume by themselves
        from playwright.async_api import expect

        await page.goto(
            f"{str(browser.http.base_url).rstrip('/')}/#/o/{org.split('/')[-1]}/t/{task.split('/')[-1]}"
        )
        await expect(page.get_by_test_id("agent-message").first).to_have_text("first")

    async def events() -> list[dict[str, Any]]:
        return list((await _get(browser, transcript)).get("sessionEvents", []))

    await _post(browser, f"{name}:sendMessage", {"text": "$ sleep 20"})

    async def sleeping() -> None:
        tools = [
            e for e in _kinds(await events(), "TOOL_CALL") if "sleep 20" in e["payload"].get("title", "")
        ]
        assert tools, "the command has not started"

    await assert_eventually(sleeping, timeout=30, interval=0.2)
    queued = (await _post(browser, f"{name}:sendMessage", {"text": "recall"}))["session"]
    assert queued["status"] == "SESSION_STATUS_RUNNING", queued

    await kill_and_restart()
    ready = time.monotonic()

    async def interrupted() -> dict[str, Any]:
        got = (await _get(browser, name))["session"]
        assert got.get("notice") == RESTARTED, got
        return dict(got)

    await assert_eventually(interrupted, timeout=90, interval=0.2)
    shown = time.monotonic() - ready

    async def answered() -> list[dict[str, Any]]:
        listed = await events()
        assert [e["text"] for e in _kinds(listed, "AGENT_MESSAGE_CHUNK")][-1].startswith("recall:"), listed[
            -3:
        ]
        return listed

    listed = await assert_eventually(answered, timeout=60, interval=0.2)
    went_on = time.monotonic() - ready
    print(
        f"\nkill -9 sandbox ({shape}): interruption shown {shown:.2f} s, "
        f"queued answer {went_on:.2f} s after ready"
    )

    assert not _kinds(listed, "ERROR"), _kinds(listed, "ERROR")
    notices = [e["payload"]["notice"] for e in _kinds(listed, "NOTICE")]
    assert notices == ["turn_interrupted", "session_loaded"], notices
    assert [e["text"] for e in _kinds(listed, "USER_MESSAGE")] == ["$ echo first", "$ sleep 20", "recall"]
    answer = [e["text"] for e in _kinds(listed, "AGENT_MESSAGE_CHUNK")][-1]
    assert answer == "recall: $ echo first | $ sleep 20", answer

    async def settled() -> None:
        got = (await _get(browser, task))["task"]
        assert got["status"] == "TASK_STATUS_IDLE", got
        assert got["sessions"][0].get("notice") == RESTARTED, got["sessions"][0]
        assert got["sessions"][0]["status"] == "SESSION_STATUS_IDLE", got["sessions"][0]

    await assert_eventually(settled, timeout=30, interval=0.2)
    if page is not None and shots is not None:
        await _page_went_on(page, shots)
    else:
        sent = (await _post(browser, f"{name}:sendMessage", {"text": "$ echo after"}))["session"]
        assert not sent.get("notice") and sent["status"] == "SESSION_STATUS_RUNNING", sent
    await assert_eventually(idle_session, timeout=30, interval=0.2)
    assert [e["text"] for e in _kinds(await events(), "AGENT_MESSAGE_CHUNK")][-1] == "after\n"
