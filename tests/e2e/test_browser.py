"""The workbench in real headless Chromium (Debian's `chromium`, driven by Playwright through
`executable_path`; `playwright install` is never used) against the embedded mesh: sign in, connect
a local organization, create a task, watch it become ready and answer its prompt (the agent's first
turn), send `write hello.txt: hi` to the offline agent, see the reply stream in and hello.txt in
the diff pane.

Each step is named; a failure reports the step, the page's text and the mesh log's tail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_gateway_mesh import EmbeddedMesh, embedded_mesh

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STEP_TIMEOUT_MS = 60_000


class Steps:
    def __init__(self) -> None:
        self.current = "start"

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.current = name
        yield


@pytest.mark.skipif(
    shutil.which("chromium") is None and not os.environ.get("CI"),
    reason="Debian chromium is not installed (`make test` installs it when it can; CI always has it)",
)
async def test_workbench_end_to_end_in_headless_chromium(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    steps = Steps()
    async with embedded_mesh(tmp_path) as mesh, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = await browser.new_page()
        page.set_default_timeout(STEP_TIMEOUT_MS)
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        try:
            with steps.step("open the workbench"):
                await page.goto(mesh.url)
            with steps.step("dev sign-in by name"):
                await page.get_by_test_id("signin-login").fill("alice")
                await page.get_by_test_id("signin-submit").click()
                await expect(page.get_by_test_id("whoami")).to_have_text("alice")
            with steps.step("connect a local organization"):
                await page.get_by_test_id("connect-path").fill(str(mesh.repos))
                await page.get_by_test_id("connect-submit").click()
                await expect(page.get_by_test_id("repo-tree")).to_contain_text(
                    "demo", timeout=STEP_TIMEOUT_MS
                )
            with steps.step("create a task"):
                await page.get_by_test_id("new-task-prompt").fill("say hello")
                await page.get_by_test_id("new-task-submit").click()
                await expect(page.get_by_test_id("task-header")).to_be_visible()
                await expect(page.get_by_test_id("task-branch")).not_to_have_text("…")
            with steps.step("watch the task become ready, its prompt the agent's first turn"):
                await expect(page.get_by_test_id("send")).to_be_enabled(timeout=STEP_TIMEOUT_MS)
                await expect(page.get_by_test_id("transcript-entry").first).to_have_text(
                    "say hello", timeout=STEP_TIMEOUT_MS
                )
                await expect(page.get_by_test_id("agent-message").first).to_contain_text(
                    "echo: say hello", timeout=STEP_TIMEOUT_MS
                )
            with steps.step("send a message to the offline agent"):
                await page.get_by_test_id("composer").fill("write hello.txt: hi")
                await page.get_by_test_id("send").click()
            with steps.step("see the reply stream in"):
                await expect(page.get_by_test_id("agent-message").last).to_contain_text(
                    "wrote hello.txt", timeout=STEP_TIMEOUT_MS
                )
            with steps.step("see hello.txt in the diff pane"):
                await expect(page.get_by_test_id("changes")).to_contain_text(
                    "hello.txt", timeout=STEP_TIMEOUT_MS
                )
                added = page.get_by_test_id("changes").locator(".d2h-ins .d2h-code-line-ctn")
                await expect(added).to_have_text("hi")
        except Exception as exc:
            await _report(page, mesh, steps, console, tmp_path, exc)
        finally:
            await browser.close()


async def _report(
    page: object, mesh: EmbeddedMesh, steps: Steps, console: list[str], tmp_path: Path, exc: Exception
) -> None:
    text = ""
    with contextlib.suppress(Exception):
        text = await page.inner_text("body")  # type: ignore[attr-defined]
        await page.screenshot(path=str(tmp_path / "failure.png"))  # type: ignore[attr-defined]
    pytest.fail(
        f"browser step failed: {steps.current!r}: {exc}\n--- page text ---\n{text[-2000:]}\n"
        f"--- console ---\n" + "\n".join(console[-20:]) + f"\n--- mesh log ---\n{mesh.log_tail()}",
        pytrace=False,
    )
