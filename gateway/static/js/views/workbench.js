// The organization workbench: sidebar (repositories → tasks and open PRs, sync progress), the
// create-task form (repository, prompt, agent and model), and the task page when a task is selected. The heading is the organization's
// display name (from the `app` topic); an organization the user cannot open, and one without
// repositories, get a page that says so and what to do.

import { post } from "../api.js";
import { h, lastSegment, mount, short } from "../dom.js";
import { items, subscribe } from "../stream.js";
import { agentPicker } from "./agent_picker.js";
import { freshnessLine, repoOverview } from "./repos.js";
import { openedSession, unreadTasks } from "./unread.js";
import { taskView } from "./task.js";

// A topic's failure in words: the organization does not exist or the user is not a member.
function unavailable(org, code) {
  const why = code === "NOT_FOUND" ? "It does not exist." : "It does not exist, or you are not one of its members.";
  return h("div", { class: "card", "data-testid": "org-unavailable" },
    h("h2", {}, `You can't open the organization “${org}”`),
    h("p", {}, why, " Ask one of its owners to add you, or connect an organization of your own."),
    h("p", {}, h("a", { href: "#/orgs" }, "← Your organizations")));
}

// The session the task page shows is marked read for the caller: the first open one when the page
// opens (what the task page selects), then each session tab the user clicks (tabs are in the order
// of the task's sessions). The sidebar's unread dots come from the caller's own `unread:` topic
// (see unread.js), so marking a session read clears its task's dot live.
function markReadOnOpen(detail, taskName) {
  let sessions = null;
  const open = (name) => openedSession(taskName, name).catch(() => { /* not fatal: stays unread */ });
  const off = subscribe(`task:${taskName}`, (state) => {
    const [t] = items(state, "foundry.task.v1.Task");
    if (!t?.sessions?.length) return;
    if (!sessions) open(t.sessions[0].name);
    sessions = t.sessions;
  });
  const onClick = (event) => {
    const tab = event.target.closest?.("[data-testid=session-tab]");
    if (!tab || !sessions) return;
    const index = [...detail.querySelectorAll("[data-testid=session-tab]")].indexOf(tab);
    if (sessions[index]) open(sessions[index].name);
  };
  detail.addEventListener("click", onClick);
  return () => { off(); detail.removeEventListener("click", onClick); };
}

export function workbenchView(root, { org, task, navigate }) {
  const orgName = `organizations/${org}`;
  const heading = h("h2", { "data-testid": "org-heading", title: orgName }, org);
  const sync = h("div", { class: "muted", "data-testid": "sync-status" }, "…");
  const tree = h("div", { "data-testid": "repo-tree" });
  const repoSelect = h("select", { "data-testid": "new-task-repo" });
  const prompt = h("textarea", { placeholder: "What should the agent do?", "data-testid": "new-task-prompt" });
  const error = h("p", { class: "error", "data-testid": "new-task-error" });
  const picker = agentPicker();
  const form = h("form", {
    onsubmit: async (event) => {
      event.preventDefault();
      error.textContent = "";
      try {
        const response = await post(`/v1/${orgName}/tasks`, {
          task: { repository: repoSelect.value, prompt: prompt.value }, ...picker.values(), requestId: crypto.randomUUID(),
        });
        prompt.value = "";
        navigate(`/o/${org}/t/${lastSegment(response.task.name)}`);
      } catch (e) {
        error.textContent = e.message;
      }
    },
  }, repoSelect, prompt, picker.element, picker.note,
  h("button", { type: "submit", "data-testid": "new-task-submit" }, "Create task"), error);
  const syncError = h("p", { class: "error" });
  const syncNow = h("button", {
    class: "secondary", "data-testid": "sync-now",
    onclick: async () => {
      syncError.textContent = "";
      try { await post(`/v1/${orgName}/syncStatus:requestSync`, { reason: "workbench: sync now", requestId: crypto.randomUUID() }); }
      catch (e) { syncError.textContent = e.message; }
    },
  }, "Sync now");
  const empty = h("div", { "data-testid": "no-repositories" },
    h("p", {}, "No repositories yet, so there is nothing to create a task on."),
    h("p", { class: "muted" }, "For a local organization, add a git repository (a directory with a .git) to the directory it was connected from; for a GitHub organization, give the GitHub App access to a repository. Then sync:"),
    syncNow, syncError);
  const newTask = h("div", { "data-testid": "new-task" }, h("h3", {}, "New task"), h("p", { class: "muted" }, "Loading…"));

  const detail = h("section", { class: "detail" });
  const right = h("aside", { class: "right" });
  mount(root, h("div", { class: "workbench" },
    h("nav", { class: "sidebar card" }, h("a", { href: "#/orgs" }, "← organizations"), heading, sync,
      h("a", { href: `#/o/${org}`, "data-testid": "overview-link" }, "Repositories"), " · ",
      h("a", { href: `#/o/${org}/members`, "data-testid": "members-link" }, "Members & activity"),
      tree, newTask),
    detail, right));

  let closeTask = () => {};
  let loaded = false; // the summary's snapshot arrived: no repositories now means none
  let sidebar = null; // {repos, tasks, prs, known} of the summary, drawn by drawTree
  let unread = new Set(); // names of the tasks with a session unread for the signed-in user
  const drawTree = () => {
    if (!sidebar) return;
    const { repos, tasks, prs, known } = sidebar;
    mount(tree, repos.map((repo) => h("div", {},
      h("h3", {}, repo.fullName || lastSegment(repo.name)),
      h("ul", {},
        tasks.filter((t) => (repo.name ? t.repository === repo.name : !known.has(t.repository))).map((t) => h("li", { class: lastSegment(t.name) === task ? "active" : "" },
          unread.has(t.name) ? h("span", { class: "unread-dot", "data-testid": "unread-dot", title: "Unread" }, "●") : null,
          h("a", { href: `#/o/${org}/t/${lastSegment(t.name)}`, "data-testid": "task-link" }, t.title || lastSegment(t.name)),
          " ", h("span", { class: `pill ${short(t.status, "TASK_STATUS_")}` }, short(t.status, "TASK_STATUS_")))),
        prs.filter((p) => p.repository === repo.name).map((p) => h("li", {},
          h("a", { href: p.url, target: "_blank" }, `#${p.number} ${p.title}`), " ", h("span", { class: "muted" }, "PR")))))));
  };
  const offUnread = subscribe(`unread:${orgName}`, (state) => {
    unread = unreadTasks(state);
    drawTree();
  });
  const offApp = subscribe("app", (state) => {
    const [me] = items(state, "Organization").filter((o) => o.name === orgName);
    if (me?.displayName) heading.textContent = me.displayName;
  });
  const unsubscribe = subscribe(`organization:${orgName}`, (state) => {
    if (state.error) { closeTask(); closeTask = () => {}; mount(root, unavailable(org, state.code)); return; }
    const [status] = items(state, "SyncStatus");
    if (status) mount(sync, freshnessLine(status, "sidebar-freshness"));
    const repos = items(state, "RepositorySummary");
    const tasks = items(state, "TaskSummary");
    const prs = items(state, "PullRequestSummary");
    if (state.status === "live") loaded = true;
    if (loaded) {
      const showing = newTask.contains(form) ? "form" : newTask.contains(empty) ? "empty" : "";
      const want = repos.length ? "form" : "empty";
      if (showing !== want) mount(newTask, h("h3", {}, "New task"), want === "form" ? form : empty);
    }
    const selected = repoSelect.value;
    mount(repoSelect, repos.map((r) => h("option", { value: r.name }, r.fullName || lastSegment(r.name))));
    if (selected) repoSelect.value = selected;
    const known = new Set(repos.map((r) => r.name));
    const orphans = tasks.filter((t) => !known.has(t.repository));
    if (orphans.length) repos.push({ name: "", fullName: "other" });
    sidebar = { repos, tasks, prs, known };
    drawTree();
  });

  if (task) {
    const closeView = taskView(detail, right, { org, task, navigate });
    const closeUnread = markReadOnOpen(detail, `${orgName}/tasks/${task}`);
    closeTask = () => { closeUnread(); closeView(); };
  } else {
    const overview = repoOverview(org);
    mount(detail, overview.element, h("p", { class: "muted" }, "Pick a task in the sidebar, or create one."));
    closeTask = overview.cleanup;
  }
  return () => { offApp(); unsubscribe(); offUnread(); closeTask(); };
}
