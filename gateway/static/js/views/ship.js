// The task page's Ship card: Push (PushTask: commit the agent's changes and push the task's branch;
// for a local organization into the local repository's branch) and Publish pull request
// (PublishPullRequest, GitHub organizations; asks first, with the title and draft choice). Both are
// recorded on the task and run by a worker; the card follows the task's `publication` on its
// stream: requested → pushing / publishing (queued or running: the API has one state for both) →
// pushed at <commit> / the pull request's link, or the failure in words.
//
// shipPanel(org, taskName) → { element, render(task, ended), close() }.

import { post } from "../api.js";
import { h, mount, short } from "../dom.js";
import { items, subscribe } from "../stream.js";

// Refusals of the request itself (google.rpc.ErrorInfo reasons), in words.
const REFUSED = {
  PROVIDER_HAS_NO_PULL_REQUESTS: "This organization's repositories are local: they have no pull requests. Push sends the branch to the local repository instead.",
  NO_SANDBOX: "The task's sandbox is not ready yet; try again once it is.",
  TASK_ENDED: "The task has ended: it is read-only.",
  PUBLISH_IN_PROGRESS: "A push or pull request of this task is still running; wait until it ends.",
  PULL_REQUEST_ALREADY_EXISTS: "A pull request for this branch is already open.",
};

// A failure recorded on the task, without the internal call names it may carry ("PushBranch: ").
function readable(message) {
  return (message || "no reason given").replace(/\b(?:[A-Z][a-z]+){2,}: /g, "").replace(/\s+/g, " ").trim();
}

function refusal(e) {
  const reason = (e.body?.details || []).map((d) => d.reason).find(Boolean);
  return REFUSED[reason] || e.message;
}

export function shipPanel(org, taskName) {
  const element = h("div", { class: "card ship", "data-testid": "ship" });
  let task = null;
  let ended = false;
  let provider = "";     // the organization's provider (PROVIDER_GITHUB, PROVIDER_LOCAL), once known
  let requesting = "";   // "push" | "publish" while the request is being sent
  let confirming = null; // { title, draft } inputs while Publish asks first
  let error = "";        // why the last request was refused

  const offOrg = subscribe(`organization:organizations/${org}`, (state) => {
    const [status] = items(state, "SyncStatus");
    provider = status?.provider || "";
    if (task) render(task, ended);
  });

  async function request(kind, path, body) {
    requesting = kind;
    error = "";
    confirming = null;
    render(task, ended);
    try {
      const answer = await post(`/v1/${taskName}:${path}`, { ...body, requestId: crypto.randomUUID() });
      if (answer.task) task = answer.task; // PUBLISHING at once; the stream carries the rest
    } catch (e) {
      error = `${kind === "push" ? "Push" : "Publish"} refused: ${refusal(e)}`;
    } finally {
      requesting = "";
      render(task, ended);
    }
  }

  function progress(p, pushOnly) {
    const state = short(p?.state, "PUBLICATION_STATE_");
    const doing = pushOnly ? "pushing the branch" : "pushing, then opening the pull request";
    const steps = state === "error"
      ? [["requested", "done"], [`${doing}: failed`, "failed"]]
      : [["requested", "done"], [doing, state === "publishing" ? "current" : "done"],
        [pushOnly ? "pushed" : "published", state === "published" ? "done" : ""]];
    return h("div", { class: "stages", "data-testid": "ship-progress", "data-state": state },
      steps.map(([label, how]) => h("span", { class: `stage ${how}` }, label)));
  }

  function status(t) {
    const p = t.publication;
    if (requesting) return h("p", { class: "muted", "data-testid": "ship-status" }, requesting === "push" ? "Asking for a push…" : "Asking for a pull request…");
    if (!p?.state) return null;
    const pushOnly = Boolean(p.pushOnly);
    const what = pushOnly ? "Push" : "Pull request";
    const state = p.state.replace("PUBLICATION_STATE_", "");
    let line;
    if (state === "PUBLISHING") {
      line = h("p", { class: "muted", "data-testid": "ship-status" }, pushOnly
        ? `Pushing ${t.branch}… (queued for a worker, then pushed)` : `Publishing a pull request for ${t.branch}… (queued for a worker: push, then open)`);
    } else if (state === "ERROR") {
      line = h("p", { class: "error", "data-testid": "ship-error" }, `${what} failed: ${readable(p.errorMessage)}`,
        h("span", { class: "muted" }, " — fix the cause and try again."));
    } else if (pushOnly) {
      line = h("p", { "data-testid": "ship-status" }, "Pushed ", h("code", {}, t.branch), " at ", h("code", { "data-testid": "pushed-commit" }, (p.headCommit || "").slice(0, 12)),
        provider === "PROVIDER_LOCAL" ? " to the local repository." : ".");
    } else {
      line = h("p", { "data-testid": "ship-status" }, "Published: ", t.pullRequest?.url
        ? h("a", { href: t.pullRequest.url, target: "_blank", rel: "noopener", "data-testid": "pr-link" }, `pull request #${t.pullRequest.number}`) : "the pull request shows here after the next sync.");
    }
    return [progress(p, pushOnly), line];
  }

  function confirmCard(t) {
    return h("div", { class: "confirm", "data-testid": "publish-confirm" },
      h("strong", {}, "Publish a pull request?"), " ",
      h("span", { class: "muted" }, `The branch ${t.branch} is pushed (uncommitted changes are committed first) and a pull request is opened on GitHub against the default branch.`),
      h("label", {}, "Title ", confirming.title), h("label", { class: "inline" }, confirming.draft, " draft"), " ",
      h("button", { "data-testid": "publish-yes", onclick: () => request("publish", "publishPullRequest", { title: confirming.title.value.trim(), draft: confirming.draft.checked }) }, "Publish pull request"), " ",
      h("button", { class: "secondary", "data-testid": "publish-no", onclick: () => { confirming = null; render(task, ended); } }, "Cancel"));
  }

  function render(t, isEnded) {
    task = t;
    ended = isEnded;
    if (!t) return;
    const p = t.publication;
    const running = p?.state === "PUBLICATION_STATE_PUBLISHING" || Boolean(requesting);
    const ready = Boolean(t.sandbox?.cwd);
    const local = provider === "PROVIDER_LOCAL";
    const prOpen = Boolean(t.pullRequest?.url) && /_(OPEN|DRAFT)$/.test(t.pullRequest.state || "");
    const publishedHere = p?.state === "PUBLICATION_STATE_PUBLISHED" && !p.pushOnly;
    const why = ended ? "The task has ended." : !ready ? "Available once the sandbox is ready." : "";
    mount(element, h("h3", {}, "Ship"),
      h("div", { class: "inline" },
        h("button", {
          class: "secondary", "data-testid": "push", disabled: ended || !ready || running,
          title: local ? "Commit the changes and push the branch to the local repository" : "Commit the changes and push the branch",
          onclick: () => request("push", "push", { reason: "workbench push" }),
        }, "Push"), " ",
        h("button", {
          "data-testid": "publish-pr", disabled: ended || !ready || running || local || prOpen || Boolean(confirming),
          title: local ? "Pull requests need a GitHub organization" : prOpen ? "A pull request is open" : "Push and open a pull request",
          onclick: () => {
            confirming = { title: h("input", { "data-testid": "publish-title", value: t.title || "", "aria-label": "Pull request title" }), draft: h("input", { type: "checkbox", "data-testid": "publish-draft" }) };
            render(task, ended);
          },
        }, "Publish pull request")),
      why ? h("p", { class: "muted" }, why) : null,
      local ? h("p", { class: "muted", "data-testid": "ship-local" }, "Local organization: Push updates the branch in the local repository; pull requests need GitHub.") : null,
      prOpen && !publishedHere ? h("p", {}, "Open: ", h("a", { href: t.pullRequest.url, target: "_blank", rel: "noopener", "data-testid": "open-pr-link" }, `pull request #${t.pullRequest.number}`)) : null,
      confirming ? confirmCard(t) : null,
      status(t),
      error ? h("p", { class: "error", "data-testid": "ship-error" }, error) : null);
  }

  return { element, render, close: offOrg };
}
