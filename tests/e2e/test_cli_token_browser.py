"""The workbench's CLI token in real headless Chromium (Debian's `chromium` through Playwright's
`executable_path`), in front of the real gateway and organization/github-data services: sign in,
open Account from the user name in the top bar, create a token, copy it, and hand it to
`foundryctl login --token -`, after which foundryctl acts as that user."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.e2e.test_browser import CHROMIUM, CHROMIUM_ARGS
from tests.unit.gateway.harness import running
from tests.unit.gateway.test_cli import ok_json

pytestmark = pytest.mark.e2e


@pytest.mark.skipif(
    shutil.which("chromium") is None and not os.environ.get("CI"),
    reason="Debian chromium is not installed (`make test` installs it when it can; CI always has it)",
)
async def test_account_page_makes_a_token_foundryctl_accepts(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    async with running(tmp_path) as h, async_playwright() as pw:
        await h.signed_in("alice", member_of=["organizations/acme"])  # alice's organization
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = await browser.new_context()
            page = await context.new_page()
            page.set_default_timeout(30_000)
            await page.goto(h.url)
            await page.get_by_test_id("signin-login").fill("alice")
            await page.get_by_test_id("signin-submit").click()
            await expect(page.get_by_test_id("whoami")).to_have_text("alice")

            await page.get_by_test_id("whoami").click()
            await expect(page.get_by_test_id("account-user")).to_contain_text("users/local-alice")
            await page.get_by_test_id("cli-token-create").click()
            token = (await page.get_by_test_id("cli-token").inner_text()).strip()
            await expect(page.get_by_test_id("cli-token-command")).to_have_text(
                f"foundryctl login --token {token}"
            )
            await expect(page.get_by_test_id("cli-token-expiry")).to_contain_text("12 hours")
            await expect(page.get_by_test_id("cli-token-expiry")).to_contain_text("does not revoke")
            await page.get_by_test_id("cli-token-copy").click()
            await expect(page.get_by_test_id("cli-token-copy")).to_have_text("Copied")
        finally:
            await browser.close()

        (answer,) = await ok_json(h, tmp_path, "login", "--token", "-", stdin=token)
        assert (answer["user"], answer["login"]) == ("users/local-alice", "alice")
        orgs = await ok_json(h, tmp_path, "orgs", "list")
        assert [o["name"] for o in orgs] == ["organizations/acme"]
