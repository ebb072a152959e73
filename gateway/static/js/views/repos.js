// The repository overview (seed 02: read from the organization's cached summary projection, never
// from the provider): per repository its default branch, open pull requests, tasks and latest
// activity; how fresh the data is ("Synced 2 min ago", refreshing, stale, failed) from the summary's
// sync status; and "Sync now", which requests a background sync (RequestSync). Everything comes from
// the `organization:` topic the sidebar also listens to; a local timer only re-words "… ago".

import { post } from "../api.js";
import { h, lastSegment, mount, short } from "../dom.js";
import { items, subscribe } from "../stream.js";

// Data older than this (since the last successful full sync started) is called stale.
export const STALE_AFTER_MS = 60 * 60 * 1000;

export function ago(time, now = Date.now()) {
  if (!time) return "";
  const seconds = Math.max(0, Math.round((now - Date.parse(time)) / 1000));
  if (seconds < 45) return "just now";
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.round(minutes / 60);
  if (hours < 24) return `${hours} h ago`;
  const days = Math.round(hours / 24);
  return days === 1 ? "yesterday" : `${days} days ago`;
}

// {state: "refreshing" | "fresh" | "stale" | "error" | "never", text} for a SyncStatus (JSON).
export function freshness(status, now = Date.now()) {
  if (!status) return { state: "never", text: "Not synced yet" };
  const last = status.lastSyncTime;
  const since = last ? `last synced ${ago(last, now)}` : "never synced";
  if (status.state === "SYNC_STATE_SYNCING" || status.state === "SYNC_STATE_PENDING") {
    const phase = status.phase && status.phase !== "SYNC_PHASE_UNSPECIFIED" ? short(status.phase, "SYNC_PHASE_") : "queued";
    const progress = status.totalRepositoryCount ? ` ${status.processedRepositoryCount}/${status.totalRepositoryCount}` : "";
    return { state: "refreshing", text: `Refreshing… (${phase}${progress}; ${since})` };
  }
  if (status.state === "SYNC_STATE_ERROR") {
    return { state: "error", text: `Sync failed: ${status.errorMessage || "unknown error"} (${since})` };
  }
  if (status.installationStatus === "INSTALLATION_STATUS_INSTALL_REQUIRED" || status.installationStatus === "INSTALLATION_STATUS_RECONNECT_REQUIRED") {
    return { state: "stale", text: `Stale: the GitHub App needs to be ${status.installationStatus.endsWith("INSTALL_REQUIRED") ? "installed" : "reconnected"} (${since})` };
  }
  if (!last) return { state: "never", text: "Not synced yet" };
  if (now - Date.parse(last) > STALE_AFTER_MS) return { state: "stale", text: `Stale: ${since}` };
  return { state: "fresh", text: `Synced ${ago(last, now)}` };
}

// The freshness line shown in the sidebar and the overview: its class names the state.
export function freshnessLine(status, testid) {
  const { state, text } = freshness(status);
  return h("span", { class: `freshness ${state}`, "data-testid": testid, "data-state": state, "data-generation": status?.generation || "0" }, text);
}

export function repoOverview(org) {
  const orgName = `organizations/${org}`;
  const line = h("div", { class: "muted" });
  const note = h("span", { class: "muted", "data-testid": "sync-request-note" });
  const error = h("p", { class: "error" });
  const syncNow = h("button", {
    class: "secondary small", "data-testid": "overview-sync-now",
    onclick: async () => {
      error.textContent = "";
      syncNow.disabled = true;
      try {
        const response = await post(`/v1/${orgName}/syncStatus:requestSync`, { reason: "workbench: sync now", requestId: crypto.randomUUID() });
        note.textContent = response.enqueued ? "Sync requested."
          : "A sync is under way; another follows it to pick up recent changes.";
      } catch (e) {
        error.textContent = e.message;
      } finally {
        syncNow.disabled = false;
      }
    },
  }, "Sync now");
  const list = h("div", { class: "repo-list", "data-testid": "repo-overview" });
  const element = h("div", { class: "card overview" },
    h("h2", {}, "Repositories"), h("div", { class: "row" }, line, syncNow, note), error, list);

  let last = null;
  function render(state) {
    last = state;
    const [status] = items(state, "SyncStatus");
    mount(line, freshnessLine(status, "freshness"));
    const repos = items(state, "RepositorySummary");
    const prs = items(state, "PullRequestSummary");
    if (!repos.length) {
      mount(list, h("p", { class: "muted" }, state.status === "loading" ? "Loading…" : "No repositories yet."));
      return;
    }
    mount(list, repos.map((repo) => {
      const open = prs.filter((p) => p.repository === repo.name).length;
      const tasks = repo.taskCount || 0;
      return h("div", { class: "repo", "data-testid": "repo-card", "data-repo": repo.fullName || lastSegment(repo.name) },
        h("div", { class: "repo-name" }, repo.fullName || lastSegment(repo.name)),
        h("div", { class: "muted" },
          h("span", { "data-testid": "repo-branch" }, repo.defaultBranch ? `default branch ${repo.defaultBranch}` : "no default branch"), " · ",
          h("span", { "data-testid": "repo-prs" }, `${open} open pull request${open === 1 ? "" : "s"}`), " · ",
          h("span", { "data-testid": "repo-tasks" }, `${tasks} task${tasks === 1 ? "" : "s"}`),
          repo.latestActivityTime ? ` · active ${ago(repo.latestActivityTime)}` : ""));
    }));
  }
  const off = subscribe(`organization:${orgName}`, render);
  // Re-word "2 min ago" as time passes (no request: the data itself comes only from the stream).
  const timer = setInterval(() => { if (last) render(last); }, 30_000);
  return { element, cleanup: () => { clearInterval(timer); off(); } };
}
