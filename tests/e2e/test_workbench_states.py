"""The workbench's error, empty and read-only states in real headless Chromium (Debian's `chromium`
through Playwright's `executable_path`), in front of the real gateway and the organization,
github-data, sandbox and task services:

- an organization the user cannot open says so in words (no raw `PERMISSION_DENIED: users/…`);
- an organization without repositories shows what to do instead of a blank repository dropdown, and
  its heading is its display name, not its id; a repository added and synced brings the form back;
- in the composer Shift+Enter is a new line and Enter sends;
- Kill and Archive ask first (Cancel changes nothing); an archived task is read-only (Send, Archive,
  Kill and the composer disabled);
- the new-task form offers the mesh's agents (an unavailable one disabled, saying why) and the
  chosen agent's models, and the chosen model reaches the agent;
- an unknown task shows "Task not found" instead of loading forever.

Screenshots of the states are saved under the test's tmp_path (`screenshots/`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_browser import CHROMIUM, CHROMIUM_ARGS
from tests.unit.gateway.harness import Harness, running
from tests.unit.gateway.test_cli import EVERYTHING, make_git_repositories

pytestmark = pytest.mark.e2e
STEP_TIMEOUT_MS = 60_000


class Steps:
    def __init__(self) -> None:
        self.current = "start"

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.current = name
        yield


CHROMIUM_MISSING = pytest.mark.skipif(
    shutil.which("chromium") is None and not os.environ.get("CI"),
    reason="Debian chromium is not installed (`make test` installs it when it can; CI always has it)",
)


@contextlib.asynccontextmanager
async def signed_in_page(
    tmp_path: Path, overrides: dict[str, Any] | None = None
) -> AsyncIterator[tuple[Harness, Any, Steps, Path]]:
    """The mesh (further `Settings` fields in `overrides`), a Chromium page signed in as alice, the
    test's steps and its screenshot directory; a failing step is reported with the page's text, the
    console and a screenshot."""
    from playwright.async_api import async_playwright, expect

    shots = tmp_path / "screenshots"
    shots.mkdir()
    steps = Steps()
    async with running(tmp_path, services=EVERYTHING, overrides=overrides) as h, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = await browser.new_page()
        page.set_default_timeout(STEP_TIMEOUT_MS)
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        try:
            with steps.step("sign in"):
                await page.goto(h.url)
                await page.get_by_test_id("signin-login").fill("alice")
                await page.get_by_test_id("signin-submit").click()
                await expect(page.get_by_test_id("whoami")).to_have_text("alice")
            yield h, page, steps, shots
        except Exception as exc:
            await _report(page, steps, console, shots, exc)
        finally:
            await browser.close()


async def connect(page: Any, directory: Path, display_name: str) -> str:
    """Connect `directory` as a local organization from the Organizations page; returns its id."""
    from playwright.async_api import expect

    await page.goto(page.url.split("#", 1)[0] + "#/orgs")
    await page.get_by_test_id("connect-path").fill(str(directory))
    await page.get_by_test_id("connect-name").fill(display_name)
    await page.get_by_test_id("connect-submit").click()
    await expect(page.get_by_test_id("org-heading")).to_have_text(display_name)
    return str(page.url.split("#/o/", 1)[1])


@CHROMIUM_MISSING
async def test_organization_error_and_empty_states_in_chromium(tmp_path: Path) -> None:
    from playwright.async_api import expect

    directory = tmp_path / "empty-co"
    directory.mkdir()
    async with signed_in_page(tmp_path) as (h, page, steps, shots):
        app = page.get_by_test_id("app")
        with steps.step("an unknown organization reads as words"):
            await page.goto(f"{h.url}/#/o/nosuch")
            card = page.get_by_test_id("org-unavailable")
            await expect(card).to_contain_text("You can't open the organization “nosuch”")
            await expect(card).to_contain_text("you are not one of its members")
            await expect(app).not_to_contain_text("PERMISSION_DENIED")
            await expect(app).not_to_contain_text("users/")
            # The topic's `error` frame is not a connection error: the stream stays live.
            await expect(page.get_by_test_id("connection")).to_have_text("live")
            await page.screenshot(path=str(shots / "unknown-organization.png"))

        with steps.step("an empty organization: its name as the heading, what to do instead of a form"):
            org = await connect(page, directory, "Empty Co")
            assert org and org != "Empty Co", page.url
            await expect(page.get_by_test_id("no-repositories")).to_contain_text("No repositories yet")
            await expect(page.get_by_test_id("new-task-repo")).to_have_count(0)
            await expect(page.get_by_test_id("new-task-submit")).to_have_count(0)
            await page.screenshot(path=str(shots / "empty-organization.png"))

        with steps.step("a repository added and synced brings the create form"):
            make_git_repositories(directory, "late")
            await page.get_by_test_id("sync-now").click()
            await expect(page.get_by_test_id("new-task-repo")).to_contain_text("late")
            await expect(page.get_by_test_id("no-repositories")).to_have_count(0)
            await expect(page.get_by_test_id("org-heading")).to_have_text("Empty Co")


@CHROMIUM_MISSING
async def test_task_composer_confirmations_read_only_and_not_found_in_chromium(tmp_path: Path) -> None:
    from playwright.async_api import expect

    directory = make_git_repositories(tmp_path / "acme", "demo")
    async with signed_in_page(tmp_path) as (h, page, steps, shots):
        app = page.get_by_test_id("app")
        with steps.step("create a task and let it answer its prompt"):
            org = await connect(page, directory, "Acme Corp")
            await page.get_by_test_id("new-task-prompt").fill("say hello")
            await page.get_by_test_id("new-task-submit").click()
            await expect(page.get_by_test_id("send")).to_be_enabled()
            await expect(page.get_by_test_id("agent-message").first).to_contain_text("echo: say hello")
            await expect(page.get_by_test_id("task-status")).to_have_text("idle")

        with steps.step("Shift+Enter is a new line, Enter sends"):
            composer = page.get_by_test_id("composer")
            entries = page.get_by_test_id("transcript-entry")
            await expect(entries).to_have_count(1)  # the prompt
            await composer.click()
            await composer.press_sequentially("first line")
            await composer.press("Shift+Enter")
            await composer.press_sequentially("second line")
            await expect(composer).to_have_value("first line\nsecond line")
            await expect(entries).to_have_count(1)
            await composer.press("Enter")
            await expect(composer).to_have_value("")
            await expect(entries).to_have_count(2)
            assert await entries.nth(1).evaluate("e => e.textContent") == "first line\nsecond line"
            await expect(page.get_by_test_id("agent-message").last).to_contain_text("echo: first line")
            await expect(page.get_by_test_id("task-status")).to_have_text("idle")

        with steps.step("Kill asks first; Cancel changes nothing"):
            await page.get_by_test_id("kill").click()
            await expect(page.get_by_test_id("confirm")).to_contain_text("Kill this task?")
            await expect(page.get_by_test_id("confirm")).to_contain_text("cannot be undone")
            await page.screenshot(path=str(shots / "kill-confirmation.png"))
            await page.get_by_test_id("confirm-no").click()
            await expect(page.get_by_test_id("confirm")).to_have_count(0)
            await expect(page.get_by_test_id("kill")).to_be_enabled()
            await expect(page.get_by_test_id("task-status")).to_have_text("idle")

        with steps.step("Archive asks first, then the task is read-only"):
            await page.get_by_test_id("archive").click()
            await expect(page.get_by_test_id("confirm")).to_contain_text("Archive this task?")
            await page.get_by_test_id("confirm-yes").click()
            await expect(page.get_by_test_id("task-status")).to_have_text("archived")
            for control in ("send", "archive", "kill", "composer"):
                await expect(page.get_by_test_id(control)).to_be_disabled()
            await expect(page.get_by_test_id("read-only")).to_contain_text("archived")
            await page.screenshot(path=str(shots / "archived-task.png"))

        with steps.step("the new-task form picks the agent and model; unavailable agents say why"):
            agent, model = page.get_by_test_id("new-task-agent"), page.get_by_test_id("new-task-model")
            await expect(agent.locator("option").first).to_have_text("Fake agent (offline) (default)")
            claude = agent.locator("option", has_text="Claude Code")
            await expect(claude).to_have_text("Claude Code — unavailable")
            await expect(claude).to_be_disabled()
            assert "not installed" in (await claude.get_attribute("title") or "")
            await expect(model.locator("option")).to_have_text(["Standard (default)", "Fast"])
            await model.select_option(label="Fast")
            await page.get_by_test_id("new-task-prompt").fill("model")
            await page.get_by_test_id("new-task-submit").click()
            await expect(page.get_by_test_id("agent-message").first).to_have_text("model: fast")
            await page.screenshot(path=str(shots / "agent-and-model-picker.png"))

        with steps.step("an unknown task says so instead of loading forever"):
            await page.goto(f"{h.url}/#/o/{org}/t/nosuchtask")
            not_found = page.get_by_test_id("task-not-found")
            await expect(not_found).to_contain_text("Task not found", timeout=15_000)
            await expect(app).not_to_contain_text("Loading task")
            await page.screenshot(path=str(shots / "unknown-task.png"))


async def _report(page: Any, steps: Steps, console: list[str], shots: Path, exc: Exception) -> None:
    text = ""
    with contextlib.suppress(Exception):
        text = await page.inner_text("body")
        await page.screenshot(path=str(shots / "failure.png"))
    pytest.fail(
        f"browser step failed: {steps.current!r}: {exc}\n--- page text ---\n{text[-2000:]}\n"
        "--- console ---\n" + "\n".join(console[-20:]),
        pytrace=False,
    )
