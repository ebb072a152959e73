"""Permissions reach the user, in real headless Chromium against the embedded mesh (issue #13, item
4): an admin sets the organization's permission policy to "ask" on the Account page; a task whose
prompt makes the agent write a file shows the agent's permission request in the transcript (also
after a reload: the request is durable), Allow once answers it, and the outcome and the agent's
continuation appear.
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
async def test_a_permission_prompt_is_answered_in_the_transcript(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    steps = Steps()
    async with embedded_mesh(tmp_path) as mesh, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = await browser.new_page()
        page.set_default_timeout(STEP_TIMEOUT_MS)
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))

        try:
            with steps.step("sign in and connect a directory"):
                await page.goto(mesh.url)
                await page.get_by_test_id("signin-login").fill("alice")
                await page.get_by_test_id("signin-submit").click()
                await page.get_by_test_id("connect-path").fill(str(mesh.repos))
                await page.get_by_test_id("connect-submit").click()
                await expect(page.get_by_test_id("repo-tree")).to_contain_text("demo")
                workbench = page.url
            with steps.step("set the organization's permission policy to ask on the Account page"):
                await page.goto(f"{mesh.url}/#/account")
                policy = page.get_by_test_id("permission-policy")
                await expect(policy).to_have_value("PERMISSION_POLICY_ALLOW")
                await policy.select_option("PERMISSION_POLICY_ASK")
                await page.reload()  # what the service now says, not what the page remembers
                await expect(page.get_by_test_id("permission-policy")).to_have_value("PERMISSION_POLICY_ASK")
                await expect(page.get_by_test_id("permission-policy-error")).to_have_count(0)
            with steps.step("a task that writes a file shows the agent's permission request"):
                await page.goto(workbench)
                await page.get_by_test_id("new-task-prompt").fill("write NOTES.md: how to run the tests")
                await page.get_by_test_id("new-task-submit").click()
                request = page.get_by_test_id("permission-request")
                await expect(request).to_contain_text(
                    "The agent asks permission: write NOTES.md", timeout=30_000
                )
                await expect(page.get_by_test_id("session-status")).to_contain_text("running")
                await expect(page.get_by_test_id("permission-waiting")).to_have_text(
                    "Waiting for your permission: write NOTES.md"
                )
                await expect(page.get_by_test_id("agent-message")).to_have_count(0)
            with steps.step("a page opened later shows the same waiting request"):
                await page.reload()
                await expect(page.get_by_test_id("permission-request")).to_contain_text("write NOTES.md")
                await expect(page.get_by_test_id("permission-cut-off")).to_have_count(0)
            with steps.step("Allow once answers it; the outcome and the agent's continuation appear"):
                await page.get_by_test_id("permission-allow-once").click()
                await expect(page.get_by_test_id("permission-outcome")).to_have_text(
                    "🔒 write NOTES.md: allowed once"
                )
                await expect(page.get_by_test_id("permission-request")).to_have_count(0)
                await expect(page.get_by_test_id("permission-waiting")).to_have_text("")
                await expect(page.get_by_test_id("agent-message").last).to_have_text("wrote NOTES.md")
                await expect(page.get_by_test_id("session-status")).to_contain_text("idle", timeout=20_000)
            with steps.step("Reject refuses the next one"):
                await page.get_by_test_id("composer").fill("write SECRET.md: no")
                await page.get_by_test_id("send").click()
                await expect(page.get_by_test_id("permission-request")).to_contain_text("write SECRET.md")
                await page.get_by_test_id("permission-reject").click()
                await expect(page.get_by_test_id("permission-outcome").last).to_have_text(
                    "🔒 write SECRET.md: rejected"
                )
                await expect(page.get_by_test_id("agent-message").last).to_have_text(
                    "permission to write SECRET.md was refused"
                )
        except Exception as exc:
            await _report(page, mesh, steps, console, tmp_path, exc)
        finally:
            await browser.close()


@pytest.mark.skipif(
    shutil.which("chromium") is None and not os.environ.get("CI"),
    reason="Debian chromium is not installed (`make test` installs it when it can; CI always has it)",
)
async def test_a_prompt_cut_off_by_a_crash_says_so_and_an_allow_becomes_a_message(tmp_path: Path) -> None:
    """kill -9 of the embedded process (every service, and the agent with its sandbox) while a
    permission prompt waits: after the restart the prompt says its agent stopped, and Allow once is
    recorded and reaches the resumed session as a message, which the agent answers."""
    import asyncio

    from playwright.async_api import async_playwright, expect

    from tests.e2e.procs.world import make_repos
    from tests.helpers.procs import MeshPorts, spawn, stop, wait_healthy

    ports = MeshPorts()
    url = f"http://127.0.0.1:{ports.gateway}"
    env = {
        **ports.env(),
        "FOUNDRY_DATA_DIR": str(tmp_path / "data"),
        "FOUNDRY_LOG_FORMAT": "console",
        "FOUNDRY_GATEWAY__PUBLIC_URL": url,
    }
    logs = [tmp_path / "embedded-1.log"]
    procs = [spawn("services.embedded", env, log_path=logs[0])]
    steps = Steps()
    try:
        await wait_healthy(ports, procs[0])
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = await browser.new_page()
            page.set_default_timeout(STEP_TIMEOUT_MS)
            try:
                with steps.step("ask policy, and a write prompt waits for its answer"):
                    await page.goto(url)
                    await page.get_by_test_id("signin-login").fill("alice")
                    await page.get_by_test_id("signin-submit").click()
                    await page.get_by_test_id("connect-path").fill(str(make_repos(tmp_path)))
                    await page.get_by_test_id("connect-submit").click()
                    await expect(page.get_by_test_id("repo-tree")).to_contain_text("demo")
                    workbench = page.url
                    await page.goto(f"{url}/#/account")
                    await page.get_by_test_id("permission-policy").select_option("PERMISSION_POLICY_ASK")
                    await page.reload()
                    await expect(page.get_by_test_id("permission-policy")).to_have_value(
                        "PERMISSION_POLICY_ASK"
                    )
                    await page.goto(workbench)
                    await page.get_by_test_id("new-task-prompt").fill("write NOTES.md: cut off")
                    await page.get_by_test_id("new-task-submit").click()
                    await expect(page.get_by_test_id("permission-request")).to_contain_text(
                        "write NOTES.md", timeout=30_000
                    )
                    task_page = page.url
                with steps.step("kill -9 and restart: the prompt says its agent stopped"):
                    procs[-1].kill()
                    await asyncio.to_thread(procs[-1].wait, 10)
                    logs.append(tmp_path / "embedded-2.log")
                    procs.append(spawn("services.embedded", env, log_path=logs[-1]))
                    await wait_healthy(ports, procs[-1])
                    await page.goto(task_page)
                    await page.reload()
                    await expect(page.get_by_test_id("permission-cut-off")).to_be_visible(timeout=30_000)
                    await expect(page.get_by_test_id("permission-waiting")).to_have_text("")
                    await expect(page.get_by_test_id("session-status")).to_contain_text(
                        "idle", timeout=30_000
                    )
                with steps.step("Allow once is recorded and sent to the session as a message"):
                    await page.get_by_test_id("permission-allow-once").click()
                    await expect(page.get_by_test_id("permission-outcome")).to_have_text(
                        "🔒 write NOTES.md: allowed once"
                        " (the agent that asked had stopped: sent to the session as a message)"
                    )
                    await expect(page.get_by_test_id("agent-message").last).to_contain_text(
                        "Permission granted (once) for: write NOTES.md.", timeout=30_000
                    )
            except Exception as exc:
                await page.screenshot(path=str(tmp_path / "failure.png"))
                raise AssertionError(f"failed at: {steps.current}") from exc
            finally:
                await browser.close()
    except BaseException:
        print("\n".join(log.read_text(errors="replace")[-4000:] for log in logs))
        raise
    finally:
        for proc in procs:
            stop(proc)
