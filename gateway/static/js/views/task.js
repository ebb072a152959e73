// The task page: header, staged provisioning, session tabs, live transcript, composer, changes with
// per-file diffs, file tree, sandbox processes, archive and kill.

import { post } from "../api.js";
import { h, lastSegment, mount, short } from "../dom.js";
import { items, subscribe } from "../stream.js";

const STAGES = ["QUEUED", "SANDBOX_ALLOCATED", "REPO_PREPARED", "AGENT_STARTING", "AGENT_READY", "SESSION_CREATING", "READY"];
const SENDABLE = new Set(["SESSION_STATUS_READY", "SESSION_STATUS_IDLE", "SESSION_STATUS_RUNNING"]);

export function taskView(detail, right, { org, task }) {
  const taskName = `organizations/${org}/tasks/${task}`;
  const header = h("div", { class: "card", "data-testid": "task-header" }, "Loading task…");
  const tabs = h("div", { class: "tabs", "data-testid": "session-tabs" });
  const sessionStatus = h("div", { class: "muted", "data-testid": "session-status" });
  const transcript = h("div", { class: "transcript", "data-testid": "transcript" });
  const composer = h("textarea", { placeholder: "Message the agent…", "data-testid": "composer" });
  const send = h("button", { "data-testid": "send", disabled: true }, "Send");
  const sendError = h("p", { class: "error" });
  const changes = h("div", { "data-testid": "changes" });
  const files = h("ul", { class: "muted", "data-testid": "file-tree" });
  const processes = h("ul", { "data-testid": "processes" });
  mount(detail, header, tabs, sessionStatus, transcript,
    h("form", { onsubmit: (e) => { e.preventDefault(); sendMessage(); } }, composer, send, sendError));
  mount(right, h("div", { class: "card" }, h("h3", {}, "Changes"), changes),
    h("div", { class: "card" }, h("h3", {}, "Files"), files),
    h("div", { class: "card" }, h("h3", {}, "Processes"), processes));

  let selected = null;          // session name shown in the tabs
  let sessionState = null;
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

  function renderComposer() {
    send.disabled = !(sessionState && SENDABLE.has(sessionState.status));
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
      h("div", { class: "inline" },
        h("button", { class: "secondary", "data-testid": "archive", onclick: () => post(`/v1/${taskName}:archive`, {}) }, "Archive"),
        " ",
        h("button", { class: "danger", "data-testid": "kill", onclick: () => post(`/v1/${taskName}:kill`, {}) }, "Kill")));
  }

  function renderGit(git) {
    const diffs = new Map((git?.diffs || []).map((d) => [d.path, d]));
    const changed = git?.fileChanges || [];
    mount(changes, changed.length ? changed.map((c) => h("details", { open: true, "data-testid": "change" },
      h("summary", {}, h("code", {}, c.path), " ", h("span", { class: "muted" }, `${short(c.type, "FILE_CHANGE_TYPE_")} +${c.addedLines} -${c.removedLines}`)),
      h("pre", { class: "diff" }, diffs.get(c.path)?.unifiedDiff || "(no diff)")))
      : h("p", { class: "muted" }, "No changes."));
    mount(files, (git?.fileTree || []).map((f) => h("li", {}, f.path)));
  }

  function renderTranscript(state) {
    const events = items(state, "SessionEvent").sort((a, b) => Number(a.seq) - Number(b.seq));
    const blocks = [];
    for (const e of events) {
      const kind = (e.kind || "").replace("SESSION_EVENT_KIND_", "");
      const last = blocks[blocks.length - 1];
      if (kind === "AGENT_MESSAGE_CHUNK" && last?.kind === kind) { last.text += e.text; continue; }
      if (kind === "USER_MESSAGE" || kind === "AGENT_MESSAGE_CHUNK" || kind === "ERROR") blocks.push({ kind, text: e.text || "" });
      else if (kind === "TOOL_CALL" || kind === "TOOL_CALL_UPDATE") blocks.push({ kind: "TOOL", text: `⚙ ${e.text || kind.toLowerCase()}` });
    }
    mount(transcript, blocks.length ? blocks.map((b) => h("div", {
      class: `msg ${b.kind === "USER_MESSAGE" ? "user" : b.kind === "TOOL" ? "tool" : b.kind === "ERROR" ? "error" : "agent"}`,
      "data-testid": b.kind === "AGENT_MESSAGE_CHUNK" ? "agent-message" : "transcript-entry",
    }, b.text)) : h("p", { class: "muted" }, state.error || "No messages yet."));
    transcript.scrollTop = transcript.scrollHeight;
  }

  function selectSession(name) {
    selected = name;
    sessionState = null;
    renderComposer();
    swap("session", name ? `session:${name}` : null, (state) => {
      [sessionState] = items(state, "foundry.task.v1.Session");
      renderComposer();
      if (!sessionState) return;
      mount(sessionStatus, h("span", { class: `pill ${short(sessionState.status, "SESSION_STATUS_")}` }, short(sessionState.status, "SESSION_STATUS_")),
        sessionState.errorMessage ? h("span", { class: "error" }, ` ${sessionState.errorMessage}`) : null);
      const live = SENDABLE.has(sessionState.status);
      const sandboxSession = sessionState.sandboxSession || (live ? `organizations/${org}/sandboxes/${task}/sessions/${lastSegment(name)}` : null);
      swap("transcript", sandboxSession ? `transcript:${sandboxSession}` : null, renderTranscript);
    });
  }

  const offTask = subscribe(`task:${taskName}`, (state) => {
    if (state.error) { mount(header, h("p", { class: "error" }, state.error)); return; }
    const [t] = items(state, "foundry.task.v1.Task");
    if (!t) return;
    renderHeader(t);
    renderGit(t.gitState);
    const sessions = t.sessions || [];
    if (!selected && sessions.length) selectSession(sessions[0].name);
    mount(tabs, sessions.map((s) => h("button", {
      class: s.name === selected ? "active" : "", "data-testid": "session-tab",
      onclick: () => { selectSession(s.name); },
    }, s.displayName || lastSegment(s.name), s.unread ? " •" : "")));
    const sandbox = t.sandbox?.name;
    swap("processes", sandbox ? `processes:${sandbox}` : null, (ps) => {
      const list = items(ps, "Process");
      mount(processes, list.length ? list.map((p) => h("li", {}, h("code", {}, [p.command, ...(p.args || [])].join(" ")), " ",
        h("span", { class: "muted" }, short(p.state, "PROCESS_STATE_"))))
        : h("li", { class: "muted" }, "No processes."));
    });
  });

  return () => { offTask(); for (const key of Object.keys(subs)) subs[key]?.off(); };
}
