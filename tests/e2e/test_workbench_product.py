"""The rest of a real product (issue #14, item 6) in headless Chromium in front of the real gateway
and services, one mesh for every step:

- sign-out in the header: the page shows the sign-in view, API calls answer 401, and a second tab's
  stream ends (`signed_out`) so that tab shows the sign-in view too, without a reload; a stream
  refused because the session is gone (cookie expired) ends in the sign-in view instead of retrying;
- the repository overview (from the organization summary): default branch, open pull requests,
  tasks, "Synced just now" from the summary's sync status, "Sync now" bringing a new repository and
  a new sync generation; the refreshing, stale, failed and never-synced wordings;
- the members page (ListMembers) and the audit feed (ListAuditEvents), newest first, 20 a page
  with "Older events", each entry in words (who did what to which task, when);
- unread: a session that becomes unread for the caller (as when another user's turn finishes in it)
  puts a dot on its task in the sidebar without a reload (the caller's own `unread:` topic,
  WatchUserTaskStates); opening the task marks the session it shows read (UpdateUserSessionState)
  and the dot goes away live;
- the stream's client-side metrics (`window.foundryMetrics` and the panel behind the connection
  pill): listeners per topic key, why each topic was refreshed, and reconnects backing off 1 s, 2 s
  while the gateway refuses the stream, then live again;
- a 390x844 viewport: the task, overview, members and organizations pages never scroll sideways, the panels
  stack (sidebar, task page, right-hand panels), and the controls are visible within the width.

Screenshots are saved under the test's tmp_path (`screenshots/`).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.test_workbench_states import CHROMIUM_MISSING, connect, signed_in_page
from tests.unit.gateway.test_cli import make_git_repositories

pytestmark = pytest.mark.e2e
SLOW = 30_000  # provisioning and a turn of the fake agent, on a busy 2-core machine
NEWEST_AUDIT_EVENT = """o => fetch(`/v1/organizations/${o}/auditEvents?pageSize=1`)
  .then(r => r.json()).then(r => (r.auditEvents || [])[0] || {})"""
USER_STATE = "t => fetch(`/v1/${t}/userStates/me`).then(r => r.json()).then(r => r.userTaskState)"
MARK_UNREAD = """s => fetch(`/v1/${s}/userStates/me?updateMask=unread`, {
  method: "PATCH", body: JSON.stringify({unread: true}),
  headers: {"Content-Type": "application/json",
            "X-CSRF-Token": decodeURIComponent(document.cookie.match(/foundry_csrf=([^;]+)/)[1])},
}).then(r => r.status)"""
FRESHNESS_STATES = """async () => {
  const { freshness } = await import("/js/views/repos.js");
  const now = Date.parse("2026-01-01T12:00:00Z");
  const at = (minutes) => new Date(now - minutes * 60000).toISOString();
  const cases = {
    refreshing: { state: "SYNC_STATE_SYNCING", phase: "SYNC_PHASE_SYNCING_PULL_REQUESTS",
                  processedRepositoryCount: 3, totalRepositoryCount: 10, lastSyncTime: at(2) },
    stale: { state: "SYNC_STATE_SYNCED", lastSyncTime: at(180) },
    error: { state: "SYNC_STATE_ERROR", errorMessage: "token revoked", lastSyncTime: at(2) },
    never: { state: "SYNC_STATE_UNSPECIFIED" },
    fresh: { state: "SYNC_STATE_SYNCED", lastSyncTime: at(2) },
  };
  const out = {};
  for (const [k, v] of Object.entries(cases)) { const f = freshness(v, now); out[k] = [f.state, f.text]; }
  return out;
}"""


@CHROMIUM_MISSING
async def test_workbench_product_flows_in_chromium(tmp_path: Path) -> None:
    from playwright.async_api import expect

    directory = make_git_repositories(tmp_path / "acme", "demo", "tools")
    async with signed_in_page(tmp_path) as (h, page, steps, shots):
        with steps.step("connect an organization"):
            org = await connect(page, directory, "Acme Corp")

        with steps.step("create a task and let it answer"):
            # The repository is chosen, not left to the drop-down's default (the summary's order).
            repo = page.get_by_test_id("new-task-repo")
            await expect(repo.locator("option", has_text="tools")).to_have_count(1)
            await repo.select_option(label="demo")
            await page.get_by_test_id("new-task-prompt").fill("say hello")
            await page.get_by_test_id("new-task-submit").click()
            answer = page.get_by_test_id("agent-message").first
            await expect(answer).to_contain_text("echo: say hello", timeout=SLOW)
            await expect(page.get_by_test_id("task-status")).to_have_text("idle", timeout=SLOW)
            task_url = page.url
            # A second task, on the other repository (its history fills more than one audit page).
            await page.get_by_test_id("new-task-repo").select_option(label="tools")
            await page.get_by_test_id("new-task-prompt").fill("say bye")
            await page.get_by_test_id("new-task-submit").click()
            await expect(answer).to_contain_text("echo: say bye", timeout=SLOW)
            await expect(page.get_by_test_id("task-status")).to_have_text("idle", timeout=SLOW)

        with steps.step("repository overview: branch, pull requests, tasks, freshness, sync now"):
            await page.get_by_test_id("overview-link").click()
            cards = page.get_by_test_id("repo-card")
            await expect(cards).to_have_count(2)
            demo = page.locator("[data-testid=repo-card][data-repo=demo]")
            await expect(demo.get_by_test_id("repo-branch")).to_have_text("default branch main")
            await expect(demo.get_by_test_id("repo-prs")).to_have_text("0 open pull requests")
            await expect(demo.get_by_test_id("repo-tasks")).to_have_text("1 task")
            tools = page.locator("[data-testid=repo-card][data-repo=tools]")
            await expect(tools.get_by_test_id("repo-tasks")).to_have_text("1 task")
            fresh = page.get_by_test_id("freshness")
            await expect(fresh).to_have_text(re.compile(r"^Synced (just now|1 min ago)$"))
            await expect(fresh).to_have_attribute("data-state", "fresh")
            await expect(page.get_by_test_id("sidebar-freshness")).to_have_text(re.compile("^Synced "))
            generation = int(await fresh.get_attribute("data-generation") or "0")
            assert generation >= 1
            # Sync now: a repository added on disk appears once the background sync ran.
            make_git_repositories(directory, "late")
            await page.get_by_test_id("overview-sync-now").click()
            await expect(page.get_by_test_id("sync-request-note")).to_have_text("Sync requested.")
            await expect(page.locator("[data-testid=repo-card][data-repo=late]")).to_be_visible()
            await expect(fresh).to_have_attribute("data-generation", str(generation + 1))
            await expect(fresh).to_have_attribute("data-state", "fresh")
            await page.screenshot(path=str(shots / "repository-overview.png"))
            # The other states, worded from a sync status as the summary carries it.
            worded = await page.evaluate(FRESHNESS_STATES)
            assert worded == {
                "refreshing": [
                    "refreshing",
                    "Refreshing… (syncing pull requests 3/10; last synced 2 min ago)",
                ],
                "stale": ["stale", "Stale: last synced 3 h ago"],
                "error": ["error", "Sync failed: token revoked (last synced 2 min ago)"],
                "never": ["never", "Not synced yet"],
                "fresh": ["fresh", "Synced 2 min ago"],
            }, worded

        with steps.step("members and the audit feed, newest first, paged, in words"):
            # The audit log is appended in the background: wait until the last turn's end is in it.
            for _ in range(100):
                newest = await page.evaluate(NEWEST_AUDIT_EVENT, org)
                if newest.get("kind") == "task.status" and newest.get("payload", {}).get("to") == "idle":
                    break
                await page.wait_for_timeout(100)
            await page.get_by_test_id("members-link").click()
            member = page.get_by_test_id("member")
            await expect(member).to_have_count(1)
            await expect(member).to_contain_text("@alice")
            await expect(member.get_by_test_id("member-role")).to_have_text("owner")
            entries = page.get_by_test_id("audit-entry")
            await expect(entries).to_have_count(20)  # one page; the task's provisioning made more
            await expect(entries.first).to_have_text(
                re.compile(r"^Foundry moved task “feat: say bye” from running to idle (just now|1 min ago)$")
            )
            older = page.get_by_test_id("audit-older")
            while await older.is_visible():
                count = await entries.count()
                await older.click()
                await expect(entries).not_to_have_count(count)
            feed = page.get_by_test_id("audit-feed")
            created = "alice created task “feat: say hello” on branch feat/say-hello"
            await expect(feed).to_contain_text(created)
            await expect(feed).to_contain_text("Foundry finished provisioning task “feat: say hello”")
            await expect(feed).not_to_contain_text("users/")
            times = await entries.evaluate_all("es => es.map(e => Date.parse(e.dataset.time))")
            assert len(times) > 20 and times == sorted(times, reverse=True), times
            await page.screenshot(path=str(shots / "members-and-activity.png"), full_page=True)
            await page.get_by_test_id("back-to-org").click()
            await expect(page.get_by_test_id("repo-card")).to_have_count(3)
            # Someone else's (or no) organization: words, not a gRPC status.
            await page.goto(f"{h.url}/#/o/nosuch/members")
            await expect(page.get_by_test_id("members-error")).to_have_text(
                "You can't see the organization “nosuch”: it does not exist, "
                "or you are not one of its members."
            )
            await expect(page.get_by_test_id("app")).not_to_contain_text("PERMISSION_DENIED")

        with steps.step("an unread session shows a dot in the sidebar; opening its task clears it"):
            task_name = f"organizations/{org}/tasks/{task_url.rsplit('/t/', 1)[1]}"
            state = await page.evaluate(USER_STATE, task_name)
            # The page opened this task before: the caller is one of its viewers, nothing unread.
            assert [s["unread"] for s in state["sessions"]] == [False], state
            session = state["sessions"][0]["name"].split("/userStates/")[0]
            await page.goto(task_url)
            await expect(page.get_by_test_id("session-tab")).to_have_count(1)
            await page.get_by_test_id("overview-link").click()  # off the task page, in the same page
            await expect(page.get_by_test_id("repo-card").first).to_be_visible()
            await expect(page.get_by_test_id("task-link").first).to_be_visible()
            await expect(page.get_by_test_id("unread-dot")).to_have_count(0)
            await page.evaluate("window.__sameDocument = true")
            # As when another user's turn finishes in it: the session becomes unread for alice.
            await page.evaluate(MARK_UNREAD, session)
            state = await page.evaluate(USER_STATE, task_name)
            assert [s["unread"] for s in state["sessions"]] == [True], state
            href = f"#/o/{org}/t/{task_name.rsplit('/', 1)[1]}"
            row = page.locator("[data-testid=repo-tree] li", has=page.locator(f"a[href='{href}']"))
            await expect(row.get_by_test_id("unread-dot")).to_be_visible()  # live, from the stream
            await expect(page.get_by_test_id("unread-dot")).to_have_count(1)
            assert await page.evaluate("window.__sameDocument === true")  # no reload happened
            await page.locator("[data-testid=repo-tree]").screenshot(path=str(shots / "sidebar-unread.png"))
            await page.screenshot(path=str(shots / "sidebar-unread-page.png"), full_page=True)
            await row.get_by_test_id("task-link").click()
            await expect(page.get_by_test_id("session-tab")).to_have_count(1)
            await expect(page.get_by_test_id("unread-dot")).to_have_count(0)  # cleared live
            assert await page.evaluate("window.__sameDocument === true")
            for _ in range(50):
                state = await page.evaluate(USER_STATE, task_name)
                if not state["sessions"][0]["unread"]:
                    break
                await page.wait_for_timeout(100)
            assert [s["unread"] for s in state["sessions"]] == [False], state

        with steps.step("390 px: panels stack, no sideways scroll, controls reachable"):
            await page.set_viewport_size({"width": 390, "height": 844})
            pages = {
                task_url: "task",
                f"{h.url}/#/o/{org}": "repo-card",
                f"{h.url}/#/o/{org}/members": "audit-entry",
                f"{h.url}/#/orgs": "connect-submit",
            }
            for url, shown in pages.items():
                await page.goto(url)
                await expect(page.get_by_test_id("connection")).to_have_text("live")
                await expect(page.get_by_test_id("sign-out")).to_be_visible()
                if url == task_url:
                    await expect(page.get_by_test_id("agent-message").first).to_be_visible()
                    for control in ("task-link", "composer", "send", "archive", "session-tab", "changes"):
                        await expect(page.get_by_test_id(control).first).to_be_visible()
                    # Stacked: the sidebar above the task page, the task page above the right panels.
                    boxes = [
                        await page.locator(sel).bounding_box() for sel in (".sidebar", ".detail", ".right")
                    ]
                    assert all(boxes), boxes
                    assert boxes[0]["y"] < boxes[1]["y"] < boxes[2]["y"], boxes
                    await page.screenshot(path=str(shots / "task-390px.png"), full_page=True)
                else:
                    await expect(page.get_by_test_id(shown).first).to_be_visible()
                    await page.screenshot(path=str(shots / f"{shown}-390px.png"), full_page=True)
                width = await page.evaluate("document.documentElement.scrollWidth")
                assert width <= 390, (url, width)
                for control in await page.locator("button:visible, a:visible, textarea:visible").all():
                    box = await control.bounding_box()
                    assert box is None or box["x"] + box["width"] <= 390 + 0.5, (url, box)
            await page.set_viewport_size({"width": 1280, "height": 720})
            await page.goto(task_url)

        with steps.step("subscription metrics: keys, refresh causes, reconnect with exponential backoff"):
            await expect(page.get_by_test_id("agent-message").first).to_be_visible()
            metrics = await page.evaluate("window.foundryMetrics")
            subscriptions = metrics["subscriptions"]
            # The task page and the unread marker (at least) share one `task:` topic.
            assert subscriptions[f"task:{task_name}"] >= 2, subscriptions
            assert subscriptions[f"organization:organizations/{org}"] >= 1, subscriptions
            assert subscriptions["app"] == 1, subscriptions
            assert subscriptions[f"unread:organizations/{org}"] == 1, subscriptions  # the sidebar's dots
            causes = {(r["topic"], r["why"]) for r in metrics["refreshes"]}
            assert (f"task:{task_name}", "bootstrap") in causes, metrics["refreshes"]
            created, attempts = metrics["connectionsCreated"], metrics["reconnectAttempts"]
            await page.get_by_test_id("connection").click()
            panel = page.get_by_test_id("stream-metrics")
            await expect(panel).to_be_visible()
            await expect(panel.get_by_test_id("metric-created")).to_have_text(str(created))
            # The gateway refuses the stream: reconnects back off 1 s, 2 s, … until it is back.
            refused = re.compile(r"/v1/stream\?")
            await page.route(refused, lambda route: route.fulfill(status=503, body="{}"))
            await panel.get_by_test_id("stream-reconnect").click()
            await page.wait_for_function("window.foundryMetrics.reconnectDelaysMs.length >= 2")
            await expect(page.get_by_test_id("connection")).to_have_text("reconnecting")
            await page.unroute(refused)
            await expect(page.get_by_test_id("connection")).to_have_text("live", timeout=SLOW)
            metrics = await page.evaluate("window.foundryMetrics")
            retries = metrics["reconnectAttempts"] - attempts  # 2, or more on a very slow machine
            delays = metrics["reconnectDelaysMs"][-retries:]
            assert retries >= 2 and delays == [1000 * 2**i for i in range(retries)], metrics
            assert metrics["attempt"] == 0, metrics  # reset by the successful reconnect
            # "Reconnect now" and each retry opened a connection; each failed one was disposed.
            assert metrics["connectionsCreated"] == created + 1 + retries, metrics
            assert metrics["connectionsDisposed"] == metrics["connectionsCreated"] - 1, metrics
            shown = ", ".join(f"{d // 1000} s" for d in delays)
            await expect(panel.get_by_test_id("metric-reconnects")).to_contain_text(f"(delays {shown})")
            # Still live after the reconnect: a new message is answered through the stream.
            await page.get_by_test_id("composer").fill("after reconnect")
            await page.get_by_test_id("send").click()
            await expect(page.get_by_test_id("agent-message").last).to_contain_text(
                "echo: after reconnect", timeout=SLOW
            )
            await page.screenshot(path=str(shots / "stream-metrics.png"))
            # Leaving the organization releases every topic of its pages: only `app` is left.
            await page.goto(f"{h.url}/#/orgs")
            await expect(page.get_by_test_id("org-link")).to_have_text("Acme Corp")
            assert await page.evaluate("window.foundryMetrics.subscriptions") == {"app": 1}

        with steps.step("sign out: sign-in view here and in a second tab, API calls 401"):
            # A second tab: another page with the same cookies (the same auth session).
            browser = page.context.browser
            other = await browser.new_page(storage_state=await page.context.storage_state())
            await other.goto(f"{h.url}/#/o/{org}")
            await expect(other.get_by_test_id("org-heading")).to_have_text("Acme Corp")
            await expect(other.get_by_test_id("connection")).to_have_text("live")
            await expect(page.get_by_test_id("sign-out")).to_be_visible()
            await page.get_by_test_id("sign-out").click()
            await expect(page.get_by_test_id("signin-login")).to_be_visible()
            await expect(page.get_by_test_id("whoami")).to_have_text("")
            await expect(page.get_by_test_id("sign-out")).to_be_hidden()
            # The other tab learns it from its stream's `end` frame (no reload, no polling).
            await expect(other.get_by_test_id("signin-login")).to_be_visible()
            await expect(other.get_by_test_id("org-heading")).to_have_count(0)
            await expect(other.get_by_test_id("connection")).to_have_text("offline")
            status = await page.evaluate("fetch('/v1/organizations').then(r => r.status)")
            assert status == 401, status
            await page.screenshot(path=str(shots / "signed-out.png"))
            await other.screenshot(path=str(shots / "signed-out-second-tab.png"))

        with steps.step("signing in again opens a fresh stream"):
            await page.get_by_test_id("signin-login").fill("alice")
            await page.get_by_test_id("signin-submit").click()
            await expect(page.get_by_test_id("whoami")).to_have_text("alice")
            await expect(page.get_by_test_id("org-link")).to_have_text("Acme Corp")
            await expect(page.get_by_test_id("connection")).to_have_text("live")

        with steps.step("a session gone while the stream was away ends in the sign-in view"):
            await page.context.clear_cookies()  # as when the session cookie expires
            panel = page.get_by_test_id("stream-metrics")
            if not await panel.is_visible():
                await page.get_by_test_id("connection").click()
            await panel.get_by_test_id("stream-reconnect").click()
            await expect(page.get_by_test_id("signin-login")).to_be_visible()
            await expect(page.get_by_test_id("connection")).to_have_text("offline")
            ends = await page.evaluate("window.foundryMetrics.ends")
            assert ends.get("session_gone") == 1, ends
