"""Steering in the workbench, in real headless Chromium against the embedded mesh (issue #13, item 5):
a message sent while a turn runs shows as queued at the bottom of the transcript and runs after
it; Stop cancels the running turn and the queued message, and the page says so (the session's
notice, and a notice in the transcript where the unsent message was).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.e2e.test_browser import CHROMIUM, CHROMIUM_ARGS, STEP_TIMEOUT_MS, Steps, _report
from tests.e2e.test_gateway_mesh import embedded_mesh

pytestmark = pytest.mark.e2e


@pytest.mark.skipif(
    shutil.which("chromium") is None and not os.environ.get("CI"),
    reason="Debian chromium is not installed (`make test` installs it when it can; CI always has it)",
)
async def test_queued_messages_run_after_the_turn_and_stop_cancels_and_says_so(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    steps = Steps()
    async with embedded_mesh(tmp_path) as mesh, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = await browser.new_page()
        page.set_default_timeout(STEP_TIMEOUT_MS)
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))

        async def send(text: str) -> None:
            await page.get_by_test_id("composer").fill(text)
            await page.get_by_test_id("send").click()
            await expect(page.get_by_test_id("composer")).to_have_value("")

        try:
            with steps.step("sign in, connect, create a task and see its first turn"):
                await page.goto(mesh.url)
                await page.get_by_test_id("signin-login").fill("alice")
                await page.get_by_test_id("signin-submit").click()
                await page.get_by_test_id("connect-path").fill(str(mesh.repos))
                await page.get_by_test_id("connect-submit").click()
                await expect(page.get_by_test_id("repo-tree")).to_contain_text("demo")
                await page.get_by_test_id("new-task-prompt").fill("say hello")
                await page.get_by_test_id("new-task-submit").click()
                await expect(page.get_by_test_id("agent-message").first).to_contain_text("echo: say hello")
            with steps.step("a message sent during a turn shows queued, then runs after it"):
                # Long enough for "two" to be sent, and seen queued, while "one" still runs.
                await send("$ echo one; sleep 8")
                await expect(page.get_by_test_id("agent-message").last).to_contain_text("one")
                await send("$ echo two")
                await expect(page.get_by_test_id("queued-message")).to_have_text("queued: $ echo two")
                await expect(page.get_by_test_id("queued-message")).to_have_count(0)
                await expect(page.get_by_test_id("agent-message").last).to_contain_text("two")
            with steps.step("Stop cancels the running turn and the queued message, and says so"):
                await send("$ echo long; sleep 60")
                await expect(page.get_by_test_id("agent-message").last).to_contain_text("long")
                await send("$ echo never")
                await expect(page.get_by_test_id("queued-message")).to_have_text("queued: $ echo never")
                await page.get_by_test_id("stop").click()
                await expect(page.get_by_test_id("session-notice")).to_contain_text(
                    "the 1 queued message will not be sent"
                )
                await expect(page.get_by_test_id("notice").last).to_have_text(
                    "not sent to the agent: cancelled while queued"
                )
                await expect(page.get_by_test_id("queued-message")).to_have_count(0)
                await expect(page.get_by_test_id("session-status")).to_contain_text("idle", timeout=20_000)
                await expect(page.get_by_test_id("stop")).to_have_count(0)
                await expect(page.get_by_test_id("transcript")).not_to_contain_text("never\n")
        except Exception as exc:
            await _report(page, mesh, steps, console, tmp_path, exc)
        finally:
            await browser.close()
