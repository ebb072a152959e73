// The task page: header, staged provisioning, session tabs, live transcript, composer (Enter sends,
// Shift+Enter is a new line), the review of the branch's changes (review.js), file tree, sandbox processes, archive and
// kill (each asks first). An archived or killed task is read-only; an unknown one says so.
// The transcript (tool calls, thinking, plans, permission prompts) is drawn by transcript.js, the
// session tabs (new, rename, close, model) by sessions.js, Push / Publish pull request by ship.js.

import { post } from "../api.js";
import { h, lastSegment, mount, short } from "../dom.js";
import { items, subscribe } from "../stream.js";
import { reviewPanel } from "./review.js";
import { sessionTabs } from "./sessions.js";
import { shipPanel } from "./ship.js";
import { terminalPanel } from "./terminal.js";
import { transcriptPanel } from "./transcript.js";

const STAGES = ["QUEUED", "SANDBOX_ALLOCATED", "REPO_PREPARED", "AGENT_STARTING", "AGENT_READY", "SESSION_CREATING", "READY"];
const SENDABLE = new Set(["SESSION_STATUS_READY", "SESSION_STATUS_IDLE", "SESSION_STATUS_RUNNING"]);
// Archiving or killing (under way or done): nothing more can be sent, archived or killed.
const ENDED = new Set([
  "TASK_STATUS_ARCHIVE_STOP_SESSIONS", "TASK_STATUS_ARCHIVE_RELEASE_SANDBOX", "TASK_STATUS_ARCHIVE_FINALIZE",
  "TASK_STATUS_ARCHIVED", "TASK_STATUS_KILL_DESTROY_SANDBOX", "TASK_STATUS_KILL_FINALIZE", "TASK_STATUS_KILLED",
]);
const ASK = {
  archive: ["Archive this task?", "Its agent sessions stop and its sandbox is released; the task stays readable here, read-only.", "Archive task", "secondary"],
  kill: ["Kill this task?", "Its sandbox and any uncommitted work in it are destroyed at once; this cannot be undone.", "Kill task", "danger"],
};

function notFound(detail, right, org, task) {
  mount(detail, h("div", { class: "card", "data-testid": "task-not-found" },
    h("h2", {}, "Task not found"),
    h("p", {}, `There is no task “${task}” in this organization. The link may be wrong, or the task was never created here.`),
    h("p", {}, h("a", { href: `#/o/${org}` }, "← Back to the organization"))));
  mount(right);
}

export function taskView(detail, right, { org, task }) {
  const taskName = `organizations/${org}/tasks/${task}`;
  const header = h("div", { class: "card", "data-testid": "task-header" }, "Loading task…");
  // Session tabs: new (agent, model), rename, close, the shown session's model (sessions.js).
  const tabs = sessionTabs({ taskName, select: (name) => { selectSession(name); drawTabs(); }, ended: () => ended() });
  const sessionStatus = h("div", { class: "muted", "data-testid": "session-status" });
  // The conversation, tool calls and permission prompts of the shown session (transcript.js).
  const transcript = transcriptPanel({ session: () => selected, ended: () => ended() });
  const composer = h("textarea", {
    placeholder: "Message the agent… (Enter sends, Shift+Enter for a new line)", "data-testid": "composer",
    onkeydown: (e) => {
      if (e.key !== "Enter" || e.shiftKey || e.isComposing) return;
      e.preventDefault();
      if (!send.disabled) sendMessage();
    },
  });
  const send = h("button", { "data-testid": "send", disabled: true }, "Send");
  const sendError = h("p", { class: "error" });
  const review = reviewPanel(taskName);
  const ship = shipPanel(org, taskName); // Push and Publish pull request (ship.js)
  const processes = h("ul", { "data-testid": "processes" });
  mount(detail, header, tabs.element, tabs.actions, sessionStatus, transcript.waiting, transcript.element,
    h("form", { onsubmit: (e) => { e.preventDefault(); sendMessage(); } }, composer, send, sendError),
    review.element);
  mount(right, ship.element, h("div", { class: "card" }, h("h3", {}, "Files"), review.files),
    h("div", { class: "card" }, h("h3", {}, "Processes"), processes));
  const terminal = terminalPanel(detail); // a shell in the sandbox (terminal.js)

  let selected = null;          // session name shown in the tabs
  let sessionState = null;
  let current = null;           // the task as last received
  let asking = null;            // "archive" | "kill" while its confirmation is shown
  let actionError = "";
  const ended = () => Boolean(current && ENDED.has(current.status));
  const subs = { session: null, transcript: null, processes: null };
  const swap = (key, topic, listener) => {
    if (subs[key]?.topic === topic) return;
    subs[key]?.off();
    subs[key] = topic ? { topic, off: subscribe(topic, listener) } : null;
  };

  async function sendMessage() {
    if (!selected || !composer.value.trim()) return;
    sendError.textContent = "";
    send.disabled = true;
    try {
      await post(`/v1/${selected}:sendMessage`, { text: composer.value, requestId: crypto.randomUUID() });
      composer.value = "";
    } catch (e) {
      sendError.textContent = e.message;
    } finally {
      renderComposer();
    }
  }

  async function stopSession(name) {
    sendError.textContent = "";
    try {
      await post(`/v1/${name}:stop`, {});
    } catch (e) {
      sendError.textContent = `Could not stop the session: ${e.message}`;
    }
  }

  function renderComposer() {
    // A session in error whose agent session exists takes a message: it restarts the agent.
    const retry = sessionState?.status === "SESSION_STATUS_ERROR" && sessionState.sandboxSession;
    send.disabled = ended() || !(sessionState && (SENDABLE.has(sessionState.status) || retry));
    composer.disabled = ended();
  }

  async function act(verb) {
    asking = null;
    actionError = "";
    try {
      await post(`/v1/${taskName}:${verb}`, {});
    } catch (e) {
      actionError = `Could not ${verb} the task: ${e.message}`;
    }
    renderHeader(current);
  }

  function actions(t) {
    if (asking) {
      const [question, consequence, yes, style] = ASK[asking];
      const verb = asking;
      return h("div", { class: "card confirm", "data-testid": "confirm" },
        h("strong", {}, question), " ", h("span", { class: "muted" }, consequence), " ",
        h("button", { class: style, "data-testid": "confirm-yes", onclick: () => act(verb) }, yes), " ",
        h("button", { class: "secondary", "data-testid": "confirm-no", onclick: () => { asking = null; renderHeader(current); } }, "Cancel"));
    }
    const off = ENDED.has(t.status);
    return h("div", { class: "inline" },
      h("button", { class: "secondary", "data-testid": "archive", disabled: off, onclick: () => { asking = "archive"; renderHeader(current); } }, "Archive"),
      " ",
      h("button", { class: "danger", "data-testid": "kill", disabled: off, onclick: () => { asking = "kill"; renderHeader(current); } }, "Kill"),
      off ? h("p", { class: "muted", "data-testid": "read-only" }, `This task is ${short(t.status, "TASK_STATUS_")}: it is read-only.`) : null,
      actionError ? h("p", { class: "error" }, actionError) : null);
  }

  function renderHeader(t) {
    const stage = (t.provisioning?.stage || "").replace("PROVISIONING_STAGE_", "");
    const at = STAGES.indexOf(stage);
    mount(header,
      h("h2", { "data-testid": "task-title" }, t.title || task),
      h("div", {},
        h("span", { class: `pill ${short(t.status, "TASK_STATUS_")}`, "data-testid": "task-status" }, short(t.status, "TASK_STATUS_")),
        " branch ", h("code", { "data-testid": "task-branch" }, t.branch || "…"),
        t.pullRequest?.url ? [" ", h("a", { href: t.pullRequest.url, target: "_blank" }, `PR #${t.pullRequest.number}`)] : null,
        t.owner?.login ? [" owner ", h("strong", {}, t.owner.login)] : null,
        " ", h("span", { class: "muted" }, t.repositoryFullName || "")),
      h("div", { class: "stages", "data-testid": "provisioning" },
        STAGES.map((s, i) => h("span", { class: `stage ${i < at || stage === "READY" ? "done" : i === at ? "current" : ""}` }, s.toLowerCase().replaceAll("_", " "))),
        stage === "ERROR" ? h("span", { class: "error" }, t.provisioning?.errorMessage || "provisioning failed") : null),
      t.statusMessage ? h("p", { class: "muted" }, t.statusMessage) : null,
      actions(t));
  }

  function renderGit(t) {
    review.render(t.gitState, t.fileReverts, ended(), t.sandbox?.name);
  }

  // The task's prompt, shown as the first session's first message until its transcript exists.
  const pendingPrompt = () => (current?.sessions?.[0]?.name === selected ? current.prompt || "" : "");

  const seen = new Set(); // sessions the task listed since the page opened
  const drawTabs = () => tabs.render(current?.sessions || [], selected, sessionState);

  function selectSession(name) {
    if (name === selected) return;
    selected = name;
    sessionState = null;
    renderComposer();
    swap("transcript", null);
    transcript.clear(pendingPrompt());
    swap("session", name ? `session:${name}` : null, (state) => {
      [sessionState] = items(state, "foundry.task.v1.Session");
      renderComposer();
      drawTabs();
      if (!sessionState) return;
      const running = sessionState.status === "SESSION_STATUS_RUNNING";
      const stopping = running && Boolean(sessionState.stopTime);
      mount(sessionStatus, h("span", { class: `pill ${short(sessionState.status, "SESSION_STATUS_")}` }, short(sessionState.status, "SESSION_STATUS_")),
        running && !ended() ? h("button", {
          class: "secondary", "data-testid": "stop", disabled: stopping,
          onclick: () => stopSession(sessionState.name),
        }, stopping ? "Stopping…" : "Stop") : null,
        sessionState.errorMessage ? h("span", { class: "error" }, ` ${sessionState.errorMessage}`) : null,
        sessionState.notice ? h("span", { "data-testid": "session-notice" }, ` ${sessionState.notice}`) : null);
      const live = SENDABLE.has(sessionState.status);
      const sandboxSession = sessionState.sandboxSession || (live ? `organizations/${org}/sandboxes/${task}/sessions/${lastSegment(name)}` : null);
      swap("transcript", sandboxSession ? `transcript:${sandboxSession}` : null, transcript.render);
    });
  }

  const offTask = subscribe(`task:${taskName}`, (state) => {
    const [t] = items(state, "foundry.task.v1.Task");
    if (!t && (state.code === "NOT_FOUND" || state.code === "INVALID_ARGUMENT")) { notFound(detail, right, org, task); return; }
    if (state.error) { mount(header, h("p", { class: "error" }, `This task cannot be shown: ${state.error}`)); return; }
    if (!t) return;
    current = t;
    renderHeader(t);
    renderComposer();
    renderGit(t);
    ship.render(t, ended());
    const sessions = t.sessions || [];
    // The first session at first; another one when the shown session was closed (a session just
    // created is shown before the task lists it).
    const gone = seen.has(selected) && !sessions.some((s) => s.name === selected);
    for (const s of sessions) seen.add(s.name);
    if (sessions.length && (!selected || gone)) selectSession(sessions[0].name);
    drawTabs();
    const sandbox = t.sandbox?.name;
    terminal.update(sandbox, ended());
    swap("processes", sandbox ? `processes:${sandbox}` : null, (ps) => {
      const list = items(ps, "Process");
      mount(processes, list.length ? list.map((p) => h("li", {}, h("code", {}, [p.command, ...(p.args || [])].join(" ")), " ",
        h("span", { class: "muted" }, short(p.state, "PROCESS_STATE_"))))
        : h("li", { class: "muted" }, "No processes."));
    });
  });

  return () => { offTask(); terminal.close(); ship.close(); for (const key of Object.keys(subs)) subs[key]?.off(); };
}
