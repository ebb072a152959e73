// The organization workbench: sidebar (repositories → tasks and open PRs, sync progress), the
// create-task form, and the task page when a task is selected.

import { post } from "../api.js";
import { h, lastSegment, mount, short } from "../dom.js";
import { items, subscribe } from "../stream.js";
import { taskView } from "./task.js";

export function workbenchView(root, { org, task, navigate }) {
  const orgName = `organizations/${org}`;
  const sync = h("div", { class: "muted", "data-testid": "sync-status" }, "…");
  const tree = h("div", { "data-testid": "repo-tree" });
  const repoSelect = h("select", { "data-testid": "new-task-repo" });
  const prompt = h("textarea", { placeholder: "What should the agent do?", "data-testid": "new-task-prompt" });
  const error = h("p", { class: "error" });
  const form = h("form", {
    onsubmit: async (event) => {
      event.preventDefault();
      error.textContent = "";
      try {
        const response = await post(`/v1/${orgName}/tasks`, {
          task: { repository: repoSelect.value, prompt: prompt.value }, requestId: crypto.randomUUID(),
        });
        prompt.value = "";
        navigate(`/o/${org}/t/${lastSegment(response.task.name)}`);
      } catch (e) {
        error.textContent = e.message;
      }
    },
  }, h("h3", {}, "New task"), repoSelect, prompt, h("button", { type: "submit", "data-testid": "new-task-submit" }, "Create task"), error);

  const detail = h("section", { class: "detail" });
  const right = h("aside", { class: "right" });
  mount(root, h("div", { class: "workbench" },
    h("nav", { class: "sidebar card" }, h("a", { href: "#/orgs" }, "← organizations"), h("h2", {}, org), sync, tree, form),
    detail, right));

  const unsubscribe = subscribe(`organization:${orgName}`, (state) => {
    if (state.error) { mount(tree, h("p", { class: "error" }, state.error)); return; }
    const [status] = items(state, "SyncStatus");
    if (status) {
      const progress = status.totalRepositoryCount ? ` ${status.processedRepositoryCount}/${status.totalRepositoryCount}` : "";
      mount(sync, `sync: ${short(status.state, "SYNC_STATE_")}${progress} ${status.label || ""}`);
    }
    const repos = items(state, "RepositorySummary");
    const tasks = items(state, "TaskSummary");
    const prs = items(state, "PullRequestSummary");
    const selected = repoSelect.value;
    mount(repoSelect, repos.map((r) => h("option", { value: r.name }, r.fullName || lastSegment(r.name))));
    if (selected) repoSelect.value = selected;
    const known = new Set(repos.map((r) => r.name));
    const orphans = tasks.filter((t) => !known.has(t.repository));
    if (orphans.length) repos.push({ name: "", fullName: "other" });
    mount(tree, repos.map((repo) => h("div", {},
      h("h3", {}, repo.fullName || lastSegment(repo.name)),
      h("ul", {},
        tasks.filter((t) => (repo.name ? t.repository === repo.name : !known.has(t.repository))).map((t) => h("li", { class: lastSegment(t.name) === task ? "active" : "" },
          h("a", { href: `#/o/${org}/t/${lastSegment(t.name)}`, "data-testid": "task-link" }, t.title || lastSegment(t.name)),
          " ", h("span", { class: `pill ${short(t.status, "TASK_STATUS_")}` }, short(t.status, "TASK_STATUS_")))),
        prs.filter((p) => p.repository === repo.name).map((p) => h("li", {},
          h("a", { href: p.url, target: "_blank" }, `#${p.number} ${p.title}`), " ", h("span", { class: "muted" }, "PR")))))));
  });

  const closeTask = task ? taskView(detail, right, { org, task, navigate }) : (mount(detail, h("p", { class: "muted" }, "Pick or create a task.")), () => {});
  return () => { unsubscribe(); closeTask(); };
}
