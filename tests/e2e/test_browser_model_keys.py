"""The Account page's model API keys in real headless Chromium, in front of the real gateway and
organization service: the owner sets ANTHROPIC_API_KEY (the input is emptied, the page shows only
that it is set, never the key), a member's attempt is refused with the service's words, and the
owner clears it."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from tests.e2e.test_browser import CHROMIUM, CHROMIUM_ARGS
from tests.unit.gateway.harness import running

pytestmark = pytest.mark.e2e
ORG = "organizations/acme"


@pytest.mark.skipif(
    shutil.which("chromium") is None and not os.environ.get("CI"),
    reason="Debian chromium is not installed (`make test` installs it when it can; CI always has it)",
)
async def test_account_page_sets_and_clears_a_model_key_write_only(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    secret = "sk-ant-" + uuid.uuid4().hex
    async with running(tmp_path) as h, async_playwright() as pw:
        await h.signed_in("alice", member_of=[ORG])  # owner
        await h.signed_in("bob", member_of=[ORG])  # member
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            for login in ("alice", "bob"):
                context = await browser.new_context()
                page = await context.new_page()
                page.set_default_timeout(30_000)
                await page.goto(h.url)
                await page.get_by_test_id("signin-login").fill(login)
                await page.get_by_test_id("signin-submit").click()
                await expect(page.get_by_test_id("whoami")).to_have_text(login)
                await page.get_by_test_id("whoami").click()
                panel = page.get_by_test_id("model-keys-panel")
                if login == "alice":
                    await expect(panel.get_by_test_id("model-keys-none")).to_be_visible()
                else:  # bob, a member, sees that alice's key is set, not the key
                    await expect(panel.get_by_test_id("model-key")).to_have_count(1)
                    assert secret not in await page.content()
                await panel.get_by_test_id("model-key-variable").select_option("ANTHROPIC_API_KEY")
                await panel.get_by_test_id("model-key-value").fill(secret if login == "alice" else "sk-bob")
                await panel.get_by_test_id("model-key-save").click()
                await expect(panel.get_by_test_id("model-key-value")).to_have_value("")
                if login == "alice":
                    await expect(panel.get_by_test_id("model-key")).to_have_attribute(
                        "data-variable", "ANTHROPIC_API_KEY"
                    )
                    assert secret not in await page.content()
                    await context.close()
                    continue
                await expect(panel.get_by_test_id("model-keys-error")).to_contain_text("Could not set it")
                await expect(panel.get_by_test_id("model-key")).to_have_count(1)  # alice's, unchanged
                await context.close()

            context = await browser.new_context()
            page = await context.new_page()
            page.set_default_timeout(30_000)
            await page.goto(h.url)
            await page.get_by_test_id("signin-login").fill("alice")
            await page.get_by_test_id("signin-submit").click()
            await page.get_by_test_id("whoami").click()
            panel = page.get_by_test_id("model-keys-panel")
            await panel.get_by_test_id("model-key-clear").click()
            await expect(panel.get_by_test_id("model-keys-none")).to_be_visible()
        finally:
            await browser.close()
