"""The workbench's Review panel in real headless Chromium (Debian's `chromium`), through the real
gateway and services: the empty state, a change the agent committed and one it left uncommitted
both shown against the base branch, coloured by diff2html under their full paths, a click in the
tree of changed files and the Files tree of the checkout showing that file alone (an unchanged
file: its contents with line numbers, read from the sandbox), per-file collapse, and revert with its
confirmation; once reverted, README.md opens as text again.

Screenshots are saved under the test's tmp_path (`screenshots/`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_workbench_states import CHROMIUM_MISSING, connect, signed_in_page
from tests.unit.gateway.test_cli import make_git_repositories
from tests.unit.sandbox.gitrepo import git

pytestmark = pytest.mark.e2e

DEEP = "src/deeply/nested/module/with_a_rather_long_file_name_for_the_review_panel.py"
AGENT_WORK = (
    f"$ mkdir -p {DEEP.rsplit('/', 1)[0]} && printf 'print(1)\\n' > {DEEP} && git add -A"
    " && git -c user.name=agent -c user.email=agent@example.com commit -q -m 'agent work'"
    " && printf 'uncommitted line\\n' >> README.md"
)
BIG = (1 << 20) + (1 << 16)  # a committed log past the viewer's 1 MiB
VENDORED = Path(__file__).parents[2] / "gateway/static/vendor/diff2html/diff2html.min.js"


@CHROMIUM_MISSING
async def test_review_shows_committed_and_uncommitted_changes_coloured_with_tree_and_revert(
    tmp_path: Path,
) -> None:
    from playwright.async_api import expect

    assert VENDORED.exists(), "diff2html is not vendored: run `make vendor` (make install does)"
    directory = make_git_repositories(tmp_path / "acme", "demo")
    (directory / "demo" / "docs").mkdir()
    (directory / "demo" / "docs" / "guide.md").write_text("# guide\n")
    (directory / "demo" / "logo.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00" * 10)
    (directory / "demo" / "big.log").write_bytes(b"0123456789abcde\n" * (BIG // 16))
    git("add", ".", cwd=directory / "demo")
    git("commit", "-q", "-m", "docs", cwd=directory / "demo")
    async with signed_in_page(tmp_path) as (_h, page, steps, shots):
        review = page.get_by_test_id("changes")
        with steps.step("a task with no changes shows the empty state"):
            await connect(page, directory, "Acme Corp")
            await page.get_by_test_id("new-task-prompt").fill("say hello")
            await page.get_by_test_id("new-task-submit").click()
            await expect(page.get_by_test_id("agent-message").first).to_contain_text("echo: say hello")
            await expect(page.get_by_test_id("no-changes")).to_contain_text("No changes against main")
            await page.screenshot(path=str(shots / "review-empty.png"))

        with steps.step("the agent commits one change and leaves another uncommitted: both show"):
            await expect(page.get_by_test_id("send")).to_be_enabled()
            await page.get_by_test_id("composer").fill(AGENT_WORK)
            await page.get_by_test_id("composer").press("Enter")
            changes = page.get_by_test_id("change")
            await expect(changes).to_have_count(2)
            paths = page.get_by_test_id("change-path")
            await expect(paths).to_have_text(["README.md", DEEP])  # full paths, not cut
            await expect(page.get_by_test_id("review-status")).to_contain_text(
                "2 files changed against main (committed and uncommitted)"
            )

        with steps.step("diff2html draws the diffs in colour"):
            added = review.locator(".d2h-ins").first
            await expect(added).to_be_visible()
            await expect(review.locator(".d2h-ins", has_text="uncommitted line")).to_have_count(1)
            colour = await added.evaluate("e => getComputedStyle(e).backgroundColor")
            assert colour not in ("rgba(0, 0, 0, 0)", "transparent"), colour
            await expect(page.get_by_test_id("plain-diff")).to_have_count(0)
            await review.screenshot(path=str(shots / "review-diff.png"))

        with steps.step("a click in the file tree shows that file alone; All changes shows both"):
            await page.locator(f'[data-testid="tree-file"][data-path="{DEEP}"]').click()
            await expect(changes).to_have_count(1)
            await expect(paths).to_have_text([DEEP])
            await expect(review.locator(".d2h-ins", has_text="print(1)")).to_have_count(1)
            await review.screenshot(path=str(shots / "review-one-file.png"))
            await page.get_by_test_id("tree-all").click()
            await expect(changes).to_have_count(2)

        with steps.step("the Files tree is the whole checkout: a changed file opens its diff"):
            files = page.get_by_test_id("file-tree")
            await expect(files.locator("summary", has_text="docs/")).to_be_visible()
            await expect(files.locator('[data-path="docs/guide.md"]')).to_be_hidden()  # a closed dir
            await files.locator('[data-testid="file-tree-file"][data-path="README.md"]').click()
            await expect(paths).to_have_text(["README.md"])
            await files.locator("summary", has_text="docs/").click()
            await files.locator('[data-testid="file-tree-file"][data-path="docs/guide.md"]').click()
            await expect(changes).to_have_count(0)
            await expect(page.get_by_test_id("unchanged-file")).to_contain_text(
                "docs/guide.md is unchanged against main"
            )
            await expect(page.get_by_test_id("file-content")).to_have_text("# guide")
            await page.screenshot(path=str(shots / "review-files-tree.png"))
            await page.get_by_test_id("tree-all").click()
            await expect(changes).to_have_count(2)

        with steps.step("a file's diff collapses"):
            readme = page.locator('[data-testid="change"][data-path="README.md"]')
            await readme.locator("summary").click(position={"x": 4, "y": 4})
            await expect(readme).not_to_have_attribute("open", "")
            await expect(readme.locator(".d2h-ins", has_text="uncommitted line")).to_be_hidden()

        with steps.step("revert asks first; Cancel keeps the file; Revert undoes the committed change"):
            deep = page.locator(f'[data-testid="change"][data-path="{DEEP}"]')
            await deep.get_by_test_id("revert").click()
            await expect(page.get_by_test_id("revert-confirm")).to_contain_text(f"Revert {DEEP} to main?")
            await page.get_by_test_id("revert-no").click()
            await expect(page.get_by_test_id("revert-confirm")).to_have_count(0)
            await expect(changes).to_have_count(2)
            await deep.get_by_test_id("revert").click()
            await page.get_by_test_id("revert-yes").click()
            await expect(paths).to_have_text(["README.md"])

        with steps.step("reverting the last file brings the empty state back"):
            await readme.get_by_test_id("revert").click()
            await page.get_by_test_id("revert-yes").click()
            await expect(page.get_by_test_id("no-changes")).to_contain_text("No changes against main")
            await page.screenshot(path=str(shots / "review-reverted.png"))

        with steps.step("an unchanged binary file is named with its size; a large one is cut at 1 MiB"):
            files = page.get_by_test_id("file-tree")
            await files.locator('[data-testid="file-tree-file"][data-path="logo.bin"]').click()
            await expect(page.get_by_test_id("file-note")).to_have_text("Binary file, 100 bytes; not shown.")
            await expect(page.get_by_test_id("file-content")).to_have_count(0)
            await files.locator('[data-testid="file-tree-file"][data-path="big.log"]').click()
            await expect(page.get_by_test_id("file-note")).to_have_text(
                f"Showing the first 1 MiB of {BIG:,} bytes."
            )
            await expect(page.get_by_test_id("file-content").locator(".line")).to_have_count((1 << 20) // 16)

        with steps.step("the unchanged README.md opens its text, with line numbers, where diffs show"):
            await (
                page.get_by_test_id("file-tree")
                .locator('[data-testid="file-tree-file"][data-path="README.md"]')
                .click()
            )
            await expect(page.get_by_test_id("unchanged-file")).to_contain_text(
                "README.md is unchanged against main"
            )
            content = review.get_by_test_id("file-content")
            await expect(content).to_have_attribute("data-path", "README.md")
            await expect(content.locator(".line")).to_have_text(["# demo"])
            number = await content.locator(".line").first.evaluate(
                "e => getComputedStyle(e, '::before').content"
            )
            assert number not in ("none", "normal"), number  # the line number gutter
            await expect(page.get_by_test_id("file-note")).to_have_count(0)
            await page.screenshot(path=str(shots / "review-file-viewer.png"))
