// The organization's people and history: its members (ListMembers) and its audit log
// (ListAuditEvents, newest first, 20 a page, "Older events" for the next page), each entry in words:
// who did what to which task, when. Task titles come from the organization summary topic; the audit
// log has no stream, so the feed is read when the page opens (and on "Older events"), never polled.

import { get } from "../api.js";
import { h, lastSegment, mount, short } from "../dom.js";
import { items, subscribe } from "../stream.js";
import { ago } from "./repos.js";

const PAGE_SIZE = 20;
const words = (value) => short(String(value || ""), "");

// One audit event in words: {who, what}. `people` maps users/{id} to a name; `titles` maps task
// names to titles.
export function describe(event, people, titles) {
  const actor = event.actor || "";
  const who = actor.startsWith("users/") ? people.get(actor) || lastSegment(actor) : "Foundry";
  const p = event.payload || {};
  const title = p.title && event.kind === "task.created" ? p.title : titles.get(event.task);
  const task = event.task ? `task “${title || lastSegment(event.task)}”` : "the organization";
  const person = (user) => people.get(user) || lastSegment(user);
  const what = {
    "task.created": () => `created ${task}${p.branch ? ` on branch ${p.branch}` : ""}`,
    "task.rename": () => `renamed a task to “${p.title}”`,
    "task.message": () => `sent a message in ${task}`,
    "task.owner": () => `made ${person(p.user)} the owner of ${task}`,
    "task.status": () => `moved ${task} from ${words(p.from)} to ${words(p.to)}`,
    "task.initialized": () => `finished provisioning ${task}`,
    "task.provision.step": () => `started ${words(p.step)} for ${task}`,
    "task.provision.stage": () => `reached “${words(p.stage)}” for ${task}`,
    "task.error": () => `failed ${task}${p.stage ? ` at ${words(p.stage)}` : ""}: ${p.message || "unknown error"}`,
    "task.archive.requested": () => `asked to archive ${task}`,
    "task.kill.requested": () => `asked to kill ${task}`,
    "task.archive": () => `archived ${task}`,
    "task.kill": () => `killed ${task}`,
    "task.push.requested": () => `asked to push ${task}`,
    "task.push.done": () => `pushed branch ${p.branch || event.branch} of ${task}`,
    "task.push.failed": () => `could not push ${task}: ${p.message}`,
    "task.publish.requested": () => `asked to open a pull request for ${task}`,
    "task.publish.done": () => `opened pull request #${p.number} for ${task}`,
    "task.publish.failed": () => `could not open a pull request for ${task}: ${p.message}`,
    "task.file.revert": () => `reverted ${p.path} in ${task}`,
    "task.file.revert.failed": () => `could not revert ${p.path} in ${task}: ${p.error}`,
    "session.model": () => `switched a session of ${task} to model ${p.model || "default"}`,
    "session.stop": () => `stopped the running turn in ${task}`,
    "session.close": () => `closed a session of ${task}`,
    "pull_request.merged": () => `merged the pull request of ${task}`,
  }[event.kind];
  return { who, what: what ? what() : `${words(event.kind.replaceAll(".", " "))} (${task})` };
}

export function membersView(root, { org }) {
  const orgName = `organizations/${org}`;
  const heading = h("h2", {}, "Members & activity");
  const members = h("ul", { class: "members", "data-testid": "member-list" }, h("li", { class: "muted" }, "Loading…"));
  const feed = h("ol", { class: "audit", "data-testid": "audit-feed" });
  const more = h("button", { class: "secondary small", "data-testid": "audit-older", hidden: true, onclick: () => page() }, "Older events");
  const error = h("p", { class: "error", "data-testid": "members-error" });
  mount(root, h("div", { class: "card" },
    h("p", {}, h("a", { href: `#/o/${org}`, "data-testid": "back-to-org" }, "← Back to the organization")),
    heading, h("h3", {}, "Members"), members, h("h3", {}, "Activity"), feed, more, error));

  const people = new Map();
  const titles = new Map();
  const events = [];
  let token = "";
  let closed = false;

  function render() {
    mount(feed, events.length ? events.map((event) => {
      const { who, what } = describe(event, people, titles);
      return h("li", { "data-testid": "audit-entry", "data-time": event.createTime },
        h("b", {}, who), " ", what, " ", h("span", { class: "muted", title: event.createTime }, ago(event.createTime)));
    }) : h("li", { class: "muted" }, "Nothing has happened here yet."));
  }

  async function page() {
    more.disabled = true;
    try {
      const query = new URLSearchParams({ pageSize: String(PAGE_SIZE) });
      if (token) query.set("pageToken", token);
      const response = await get(`/v1/${orgName}/auditEvents?${query}`);
      if (closed) return;
      events.push(...(response.auditEvents || []));
      token = response.nextPageToken || "";
      more.hidden = !token;
      render();
    } catch (e) {
      error.textContent = e.status === 403 || e.status === 404 ? `You can't see the organization “${org}”: it does not exist, or you are not one of its members.` : e.message;
    } finally {
      more.disabled = false;
    }
  }

  (async () => {
    try {
      const response = await get(`/v1/${orgName}/members?pageSize=1000`);
      if (closed) return;
      const list = response.members || [];
      for (const m of list) people.set(m.user, m.displayName || m.login);
      mount(members, list.length ? list.map((m) => h("li", { "data-testid": "member" },
        h("b", {}, m.displayName || m.login), " ", h("span", { class: "muted" }, `@${m.login}`), " ",
        h("span", { class: "pill", "data-testid": "member-role" }, short(m.role, "MEMBER_ROLE_")),
        m.state && m.state !== "MEMBER_STATE_ACTIVE" ? h("span", { class: "muted" }, ` ${short(m.state, "MEMBER_STATE_")}`) : null,
        m.createTime ? h("span", { class: "muted" }, ` · joined ${ago(m.createTime)}`) : null))
        : h("li", { class: "muted" }, "No members."));
    } catch (e) {
      mount(members);
      error.textContent = e.status === 403 || e.status === 404 ? `You can't see the organization “${org}”: it does not exist, or you are not one of its members.` : e.message;
      return;
    }
    await page();
  })();

  const offApp = subscribe("app", (state) => {
    const [me] = items(state, "Organization").filter((o) => o.name === orgName);
    if (me?.displayName) heading.textContent = `${me.displayName}: members & activity`;
  });
  const offSummary = subscribe(`organization:${orgName}`, (state) => {
    for (const t of items(state, "TaskSummary")) titles.set(t.name, t.title);
    if (events.length) render();
  });
  return () => { closed = true; offApp(); offSummary(); };
}
