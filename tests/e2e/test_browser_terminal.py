"""The task page's terminal in real headless Chromium, in front of the real gateway and services: open
it, type a command into xterm.js, see its output drawn, exit; without the vendored renderer the panel
says what is missing. Screenshots under the test's tmp_path (`screenshots/`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gateway.app import STATIC_DIR
from tests.e2e.test_workbench_states import CHROMIUM_MISSING, connect, signed_in_page
from tests.unit.gateway.test_cli import make_git_repositories

pytestmark = pytest.mark.e2e
XTERM = STATIC_DIR / "vendor" / "xterm" / "xterm.js"


async def _screen_lines(page: Any) -> list[str]:
    text = await page.get_by_test_id("terminal").locator(".xterm-rows").inner_text()
    return [line.strip() for line in str(text).splitlines()]


@CHROMIUM_MISSING
@pytest.mark.skipif(not XTERM.exists(), reason="xterm.js is not vendored (`make vendor` needs npm)")
async def test_the_terminal_runs_commands_in_the_sandbox_in_chromium(tmp_path: Path) -> None:
    from playwright.async_api import expect

    directory = make_git_repositories(tmp_path / "acme", "demo")
    async with signed_in_page(tmp_path) as (_h, page, steps, shots):
        with steps.step("create a task and wait for its sandbox"):
            await connect(page, directory, "Acme Corp")
            await page.get_by_test_id("new-task-prompt").fill("say hello")
            await page.get_by_test_id("new-task-submit").click()
            await expect(page.get_by_test_id("send")).to_be_enabled()
            await expect(page.get_by_test_id("terminal-open")).to_be_enabled()

        with steps.step("open the terminal and run a command in it"):
            await page.get_by_test_id("terminal-open").click()
            screen = page.get_by_test_id("terminal")
            await expect(page.get_by_test_id("terminal-status")).to_contain_text("in the sandbox")
            await expect(screen.locator(".xterm-rows")).to_contain_text("$")  # the prompt
            await screen.click()
            await page.keyboard.type("echo $((6*7))")
            await page.keyboard.press("Enter")
            await expect(screen.locator(".xterm-rows")).to_contain_text("42")
            lines = await _screen_lines(page)
            assert "42" in lines, lines  # the output on its own line, not only the typed command
            await page.keyboard.type("pwd; stty size")
            await page.keyboard.press("Enter")
            await expect(screen.locator(".xterm-rows")).to_contain_text(re.compile(r"/workspace\s*\d+ \d+"))
            size = next(line for line in await _screen_lines(page) if re.fullmatch(r"\d+ \d+", line))
            rows, columns = map(int, size.split())
            assert rows >= 10 and columns >= 40, size  # the panel's fitted size reached the shell
            await page.screenshot(path=str(shots / "terminal.png"))

        with steps.step("exit ends the terminal and the panel offers a new one"):
            await page.keyboard.type("exit")
            await page.keyboard.press("Enter")
            await expect(page.get_by_test_id("terminal-status")).to_contain_text("has ended (exit 0)")
            await expect(page.get_by_test_id("terminal-open")).to_be_enabled()

        with steps.step("a new terminal, ended from the panel"):
            await page.get_by_test_id("terminal-open").click()
            await expect(page.get_by_test_id("terminal-status")).to_contain_text("in the sandbox")
            await page.get_by_test_id("terminal-end").click()
            await expect(page.get_by_test_id("terminal-status")).to_contain_text("has ended (signal 9)")
            await expect(page.get_by_test_id("terminal-end")).to_be_hidden()

        with steps.step("until the page knows the task's sandbox, the terminal cannot be opened"):
            held: list[Any] = []  # the event stream, held back: the task (and its sandbox) not yet known
            await page.route("**/v1/stream?*", lambda route: held.append(route))
            await page.route("**/vendor/xterm/**", lambda route: route.fulfill(status=404, body="not found"))
            await page.reload()
            await expect(page.get_by_test_id("terminal-panel")).to_be_visible()
            await expect(page.get_by_test_id("terminal-open")).to_be_disabled()
            await page.unroute("**/v1/stream?*")
            for route in held:
                await route.continue_()
            await page.reload()  # (a held EventSource request does not come back by itself)

        with steps.step("without the vendored xterm.js the panel says what is missing"):
            await expect(page.get_by_test_id("terminal-open")).to_be_enabled()
            await page.get_by_test_id("terminal-open").click()
            missing = page.get_by_test_id("terminal-missing")
            await expect(missing).to_contain_text("renderer (xterm.js) is missing")
            await expect(page.get_by_test_id("send")).to_be_enabled()  # the rest of the page works
            await page.screenshot(path=str(shots / "terminal-renderer-missing.png"))
