"""Shipping and steering from the task page, and a transcript that reads like a conversation, in real
headless Chromium in front of the real gateway and the four services (issue #14, items 2 to 4):

- a `$ echo hi` turn is one collapsible tool block (command, output `hi`, exit code 0), no bare
  `⚙ tool_call` lines; thinking and the plan are their own collapsed blocks; a failing command's
  block says `failed (exit code 3)`;
- session tabs: a new session with the model "fast" answers `model` with `model: fast`; rename;
  close asks first; the last open session cannot be closed; the model of a session changes
  (ChangeModel) from its model select;
- Push: a push the local repository refuses (a pre-receive hook) shows the failure in words on the
  task; once allowed, the branch lands in the local repository;
- Publish pull request against the GitHub test double (repository served over git smart HTTP):
  asks first, then the pull request's link.

Screenshots of each flow are saved under the test's tmp_path (`screenshots/`).
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
from foundry.github_data.v1 import connection_pb2
from foundry.github_data.v1 import github_data_service_pb2 as gd_pb2
from foundry.github_data.v1 import github_data_service_pb2_grpc as gd_grpc
from foundry.github_data.v1 import sync_status_pb2 as ss
from pydantic import SecretStr

from services.platform.settings import GithubSettings
from tests.e2e.test_workbench_states import CHROMIUM_MISSING, connect, signed_in_page
from tests.helpers.github_server import GithubServer, GithubState, app_key_pair
from tests.unit.flows.support import ORGANIZATION_SERVICE, git_repo
from tests.unit.gateway.test_cli import make_git_repositories

pytestmark = pytest.mark.e2e

REFUSING_HOOK = "#!/bin/sh\necho 'pushes to this repository are frozen for the release' >&2\nexit 1\n"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@CHROMIUM_MISSING
async def test_transcript_session_tabs_and_push_in_chromium(tmp_path: Path) -> None:
    from playwright.async_api import expect

    directory = make_git_repositories(tmp_path / "acme", "demo")
    repo = directory / "demo"
    async with signed_in_page(tmp_path) as (_, page, steps, shots):
        transcript = page.get_by_test_id("transcript")
        with steps.step("a `$ echo hi` prompt: the prompt first, then one tool block"):
            await connect(page, directory, "Acme Corp")
            await page.get_by_test_id("new-task-prompt").fill("$ echo hi")
            await page.get_by_test_id("new-task-submit").click()
            await expect(page.get_by_test_id("transcript-entry").first).to_have_text("$ echo hi")
            tool = page.get_by_test_id("tool-call")
            await expect(tool).to_have_count(1)
            await expect(tool).to_have_attribute("data-status", "completed")
            await expect(tool.get_by_test_id("tool-command")).to_have_text("$ echo hi")
            await expect(tool.get_by_test_id("tool-status")).to_have_text("exit code 0")
            await expect(page.get_by_test_id("agent-message").first).to_contain_text("hi")
            await expect(transcript).not_to_contain_text("⚙")
            await expect(transcript).not_to_contain_text("tool_call")

        with steps.step("the tool block is collapsed once done, opens and closes"):
            output = tool.get_by_test_id("tool-output")
            await expect(output).to_be_hidden()
            await tool.locator("summary").click()
            await expect(output).to_be_visible()
            await expect(output).to_have_text("hi")
            await page.screenshot(path=str(shots / "tool-call-open.png"))
            await tool.locator("summary").click()
            await expect(output).to_be_hidden()

        with steps.step("thinking and the plan are their own collapsed blocks"):
            await expect(page.get_by_test_id("send")).to_be_enabled()
            await page.get_by_test_id("composer").fill("say hello")
            await page.get_by_test_id("send").click()
            await expect(page.get_by_test_id("agent-message").last).to_have_text("echo: say hello")
            thought, plan = page.get_by_test_id("thought"), page.get_by_test_id("plan")
            await expect(thought).to_have_count(1)
            await expect(plan).to_have_count(1)
            await expect(plan.locator("summary")).to_have_text("Plan (1 step)")
            await expect(plan.locator("li")).to_be_hidden()
            await thought.locator("summary").click()
            await expect(thought).to_contain_text("thinking about: say hello")
            await expect(page.get_by_test_id("transcript-entry")).to_have_count(2)  # the two prompts

        with steps.step("a failing command's block says how it ended"):
            await page.get_by_test_id("composer").fill("$ echo oops; exit 3")
            await page.get_by_test_id("send").click()
            failed = page.get_by_test_id("tool-call").nth(1)
            await expect(failed).to_have_attribute("data-status", "failed")
            await expect(failed.get_by_test_id("tool-status")).to_have_text("failed (exit code 3)")
            await failed.locator("summary").click()
            await expect(failed.get_by_test_id("tool-output")).to_have_text("oops")
            await page.screenshot(path=str(shots / "transcript-conversation.png"))

        with steps.step("a new session with the model fast answers `model`"):
            tabs = page.get_by_test_id("session-tab")
            await expect(tabs).to_have_count(1)
            await expect(page.get_by_test_id("session-close")).to_be_disabled()
            await expect(page.get_by_test_id("session-close-note")).to_contain_text("cannot be closed")
            await page.get_by_test_id("session-new").click()
            form = page.get_by_test_id("new-session-form")
            await expect(form.get_by_test_id("new-session-model").locator("option")).to_have_text(
                ["Standard (default)", "Fast"]
            )
            await form.get_by_test_id("new-session-model").select_option(label="Fast")
            await page.screenshot(path=str(shots / "new-session-form.png"))
            await form.get_by_test_id("new-session-create").click()
            await expect(form).to_have_count(0)
            await expect(tabs).to_have_count(2)
            await expect(tabs.nth(1)).to_have_class("active")
            await expect(page.get_by_test_id("tool-call")).to_have_count(0)  # the new session's transcript
            await expect(page.get_by_test_id("send")).to_be_enabled()
            await page.get_by_test_id("composer").fill("model")
            await page.get_by_test_id("send").click()
            await expect(page.get_by_test_id("agent-message").last).to_have_text("model: fast")
            await expect(page.get_by_test_id("session-model")).to_have_value("fast")

        with steps.step("rename the session"):
            await page.get_by_test_id("session-rename").click()
            await page.get_by_test_id("session-rename-input").fill("Speedy")
            await page.get_by_test_id("session-rename-input").press("Enter")
            await expect(tabs.nth(1)).to_have_text("Speedy")
            await page.screenshot(path=str(shots / "session-tabs.png"))

        with steps.step("close asks first; Cancel keeps it; then the first session is shown"):
            await page.get_by_test_id("session-close").click()
            confirm = page.get_by_test_id("session-close-confirm")
            await expect(confirm).to_contain_text("Close “Speedy”?")
            await page.screenshot(path=str(shots / "session-close-confirmation.png"))
            await page.get_by_test_id("session-close-no").click()
            await expect(confirm).to_have_count(0)
            await expect(tabs).to_have_count(2)
            await page.get_by_test_id("session-close").click()
            await page.get_by_test_id("session-close-yes").click()
            await expect(tabs).to_have_count(1)
            await expect(tabs.first).to_have_class("active")
            await expect(page.get_by_test_id("tool-call")).to_have_count(2)  # the first session's transcript
            await expect(page.get_by_test_id("session-close")).to_be_disabled()

        with steps.step("the first session's model changes from its model select"):
            model = page.get_by_test_id("session-model")
            await expect(model).to_have_value("standard")
            await model.select_option("fast")
            await expect(page.get_by_test_id("session-error")).to_have_count(0)
            await page.get_by_test_id("composer").fill("model")
            await page.get_by_test_id("send").click()
            await expect(page.get_by_test_id("agent-message").last).to_have_text("model: fast")

        with steps.step("a push the local repository refuses shows the failure in words"):
            branch = (await page.get_by_test_id("task-branch").text_content() or "").strip()
            assert branch and branch != "…"
            await expect(page.get_by_test_id("publish-pr")).to_be_disabled()
            await expect(page.get_by_test_id("ship-local")).to_contain_text("pull requests need GitHub")
            hook = repo / ".git" / "hooks" / "pre-receive"
            hook.write_text(REFUSING_HOOK)
            hook.chmod(0o755)
            await page.get_by_test_id("push").click()
            error = page.get_by_test_id("ship-error")
            # The task service retries a failed push (3 attempts here) before it records the failure.
            await expect(error).to_contain_text("Push failed:", timeout=90_000)
            await expect(error).not_to_contain_text("PushBranch")
            await expect(error).to_contain_text("frozen for the release")
            await expect(page.get_by_test_id("ship-progress")).to_have_attribute("data-state", "error")
            await expect(page.get_by_test_id("push")).to_be_enabled()
            assert not _git(repo, "branch", "--list", branch).strip()
            await page.screenshot(path=str(shots / "push-error.png"))

        with steps.step("pushed once allowed: the branch is in the local repository"):
            hook.unlink()
            await page.get_by_test_id("push").click()
            status = page.get_by_test_id("ship-status")
            await expect(status).to_contain_text(f"Pushed {branch} at")
            await expect(page.get_by_test_id("ship-progress")).to_have_attribute("data-state", "published")
            await expect(page.get_by_test_id("ship-error")).to_have_count(0)
            commit = (await page.get_by_test_id("pushed-commit").text_content() or "").strip()
            assert _git(repo, "branch", "--list", branch).strip() == branch
            assert _git(repo, "rev-parse", f"refs/heads/{branch}").startswith(commit)
            await page.screenshot(path=str(shots / "pushed.png"))


def _github_account(state: GithubState, root: Path) -> tuple[str, int, Path]:
    """A GitHub account of the test double with the App installed and one repository, `widgets`,
    a bare repository served over git smart HTTP: (login, installation id, bare repository)."""
    login, installation = f"acme-{uuid.uuid4().hex[:8]}", 4321
    state.add_account(login)
    state.install(installation, login)
    bare = root / "github-git" / login / "widgets.git"
    source = git_repo(root / "github", "widgets")
    subprocess.run(["git", "clone", "-q", "--bare", str(source), str(bare)], check=True)
    clone_url = state.serve_git(f"{login}/widgets", bare)
    state.add_repo(login, "widgets", default_branch="main")["clone_url"] = clone_url
    return login, installation, bare


@CHROMIUM_MISSING
async def test_publish_a_pull_request_against_the_github_double_in_chromium(tmp_path: Path) -> None:
    from playwright.async_api import expect

    private, public = app_key_pair()
    async with GithubServer(GithubState(app_id="4242", public_key=public)) as github:
        settings = GithubSettings(
            api_url=github.url,
            app_id="4242",
            app_private_key=SecretStr(private),
            webhook_secret=SecretStr("s"),
        )
        empty = tmp_path / "widgets-co"
        empty.mkdir()
        async with signed_in_page(tmp_path, overrides={"github": settings}) as (h, page, steps, shots):
            with steps.step("an organization connected to a GitHub account of the test double"):
                org = await connect(page, empty, "Widgets Co")
                await expect(page.get_by_test_id("sidebar-freshness")).to_have_attribute(
                    "data-state", "fresh"
                )
                state = github.state
                login, installation, bare = _github_account(state, tmp_path)
                stub = gd_grpc.GithubDataServiceStub(h.mesh.channel("github_data", ORGANIZATION_SERVICE))
                await stub.ConnectOrganization(
                    gd_pb2.ConnectOrganizationRequest(
                        connection=connection_pb2.Connection(
                            name=f"organizations/{org}/connection",
                            provider=ss.PROVIDER_GITHUB,
                            github=connection_pb2.GithubSettings(
                                account_login=login,
                                account_id=int(state.accounts[login]["id"]),
                                installation_id=installation,
                                account_type=connection_pb2.GITHUB_ACCOUNT_TYPE_ORGANIZATION,
                            ),
                        ),
                        request_id=str(uuid.uuid4()),
                    )
                )
                await expect(page.get_by_test_id("new-task-repo")).to_contain_text("widgets")

            with steps.step("a task that writes a file"):
                await page.get_by_test_id("new-task-prompt").fill("write NOTES.md: shipped from the page")
                await page.get_by_test_id("new-task-submit").click()
                await expect(page.get_by_test_id("agent-message").last).to_have_text("wrote NOTES.md")
                await expect(page.get_by_test_id("task-status")).to_have_text("idle")
                branch = (await page.get_by_test_id("task-branch").text_content() or "").strip()

            with steps.step("Publish asks first; Cancel publishes nothing"):
                await expect(page.get_by_test_id("ship-local")).to_have_count(0)
                await page.get_by_test_id("publish-pr").click()
                confirm = page.get_by_test_id("publish-confirm")
                await expect(confirm).to_contain_text("Publish a pull request?")
                await page.get_by_test_id("publish-no").click()
                await expect(confirm).to_have_count(0)
                assert not state.pulls.get(f"{login}/widgets")

            with steps.step("Publish: progress, then the pull request's link"):
                await page.get_by_test_id("publish-pr").click()
                await page.get_by_test_id("publish-title").fill("docs: notes from the workbench")
                await page.screenshot(path=str(shots / "publish-confirmation.png"))
                await page.get_by_test_id("publish-yes").click()
                link = page.get_by_test_id("pr-link")
                await expect(link).to_have_text("pull request #1", timeout=60_000)
                await expect(page.get_by_test_id("ship-progress")).to_have_attribute(
                    "data-state", "published"
                )
                href = await link.get_attribute("href") or ""
                assert f"{login}/widgets/pull/1" in href, href
                pulls = state.pulls[f"{login}/widgets"]
                assert [(p["number"], p["title"], p["head"]["ref"]) for p in pulls] == [
                    (1, "docs: notes from the workbench", branch)
                ]
                assert _git(bare, "branch", "--list", branch).strip() == branch
                await expect(page.get_by_test_id("publish-pr")).to_be_disabled()
                await page.screenshot(path=str(shots / "published-pull-request.png"))
