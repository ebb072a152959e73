// The transcript of one session, read as a conversation: the user's messages (the task's prompt is
// the first one), the agent's answer (consecutive chunks form one message), its thinking and plan
// (muted, collapsible), each tool call as one collapsible block (title, command, output, and its
// end: exit code or status), permission requests with Allow once / Always allow / Reject while
// they wait and their outcome once answered, notices, and a message queued behind the running turn
// (shown last until its turn starts).
//
// transcriptPanel({ session, ended }) → { element, waiting, render(state), clear(prompt) }:
// `session()` is the session name shown (answers go to it), `ended()` whether the task is read-only;
// render(state) draws the topic state of `transcript:<sandbox session>`; clear(prompt) shows the
// task's prompt as waiting until the session's transcript exists ("" for nothing).

import { post } from "../api.js";
import { h, mount } from "../dom.js";

// How an answered permission request reads (PERMISSION_RESPONSE payload `answer`).
const ANSWERED = {
  allow_once: "allowed once", allow_always: "always allowed", reject: "rejected",
  cancelled: "cancelled: the turn was stopped",
};
const ANSWERS = [
  ["ALLOW_ONCE", "Allow once", "", "permission-allow-once"],
  ["ALLOW_ALWAYS", "Always allow", "secondary", "permission-allow-always"],
  ["REJECT", "Reject", "danger", "permission-reject"],
];
const ENDS = new Set(["completed", "failed"]);
const CLASS = { USER_MESSAGE: "user", ERROR: "error", NOTICE: "tool", MESSAGE_QUEUED: "user queued" };
const TESTID = { AGENT_MESSAGE_CHUNK: "agent-message", NOTICE: "notice", MESSAGE_QUEUED: "queued-message" };

// The text of a tool call's ACP content (text blocks; a diff as its path and new text).
function contentText(content) {
  const out = [];
  for (const c of content || []) {
    if (c?.type === "content" && c.content?.type === "text") out.push(c.content.text || "");
    else if (c?.type === "diff") out.push(`diff of ${c.path || "?"}\n${c.newText || ""}`);
    else if (c?.type === "terminal") out.push(`(terminal ${c.terminalId || ""})`);
  }
  return out.join("");
}

// How a tool call ended, in words: "exit code 0", "failed (exit code 2)", "cancelled", "running…".
function toolEnd(b) {
  const code = typeof b.rawOutput?.exitCode === "number" ? `exit code ${b.rawOutput.exitCode}` : "";
  if (b.rawOutput?.cancelled) return "cancelled";
  if (b.status === "completed") return code || "done";
  if (b.status === "failed") return code ? `failed (${code})` : "failed";
  return b.status === "pending" ? "pending…" : "running…";
}

// Events (in log order) → blocks the view draws.
function blocksOf(events) {
  const blocks = [];
  const queued = new Map(); // turn -> message queued behind the running turn, shown last until it starts
  const asked = new Map(); // permission request id -> its block (answered when its response arrives)
  const tools = new Map(); // tool call id -> its block
  const plans = new Map(); // turn -> its plan block (a new plan replaces the turn's earlier one)
  for (const e of events) {
    const kind = (e.kind || "").replace("SESSION_EVENT_KIND_", "");
    const last = blocks[blocks.length - 1];
    const p = e.payload || {};
    const requestId = p.requestId;
    if (kind === "PERMISSION_REQUEST" && requestId) {
      const block = { kind: "PERMISSION", id: requestId, turn: e.turn, title: e.text || p.toolCall?.title || "a tool call", answer: null, cutOff: false };
      asked.set(requestId, block);
      blocks.push(block);
      continue;
    }
    if (kind === "PERMISSION_RESPONSE" && asked.has(requestId)) { asked.get(requestId).answer = p; continue; }
    if (kind === "TURN_COMPLETED") for (const b of asked.values()) if (b.turn === e.turn && !b.answer) b.cutOff = true;
    if (kind === "MESSAGE_QUEUED") { queued.set(e.turn, { kind, text: `queued: ${e.text || ""}` }); continue; }
    if (kind === "USER_MESSAGE" || kind === "NOTICE") queued.delete(e.turn);
    if (kind === "TOOL_CALL" || kind === "TOOL_CALL_UPDATE") {
      const id = p.toolCallId || `seq-${e.seq}`;
      let tool = tools.get(id);
      if (!tool) {
        tool = { kind: "TOOL", id, title: "", command: "", status: "", output: "", rawOutput: null };
        tools.set(id, tool);
        blocks.push(tool);
      }
      tool.title = p.title || tool.title || e.text || p.kind || "tool call";
      if (typeof p.rawInput?.command === "string") tool.command = p.rawInput.command;
      else if (Array.isArray(p.rawInput?.command)) tool.command = p.rawInput.command.join(" ");
      if (p.status) tool.status = p.status;
      if (p.rawOutput) tool.rawOutput = p.rawOutput;
      const text = contentText(p.content);
      // Progress updates stream output pieces; a final update's content replaces them (ACP).
      if (text) tool.output = ENDS.has(p.status) && kind === "TOOL_CALL_UPDATE" ? text : tool.output + text;
      continue;
    }
    if (kind === "AGENT_THOUGHT_CHUNK") {
      if (last?.kind === "THOUGHT") last.text += e.text || "";
      else blocks.push({ kind: "THOUGHT", id: `thought-${e.seq}`, text: e.text || "" });
      continue;
    }
    if (kind === "PLAN") {
      const entries = (p.entries || []).map((x) => ({ status: x.status || "", content: x.content || "" }));
      const plan = plans.get(e.turn);
      if (plan) { plan.entries = entries; continue; }
      const block = { kind: "PLAN", id: `plan-${e.seq}`, entries };
      plans.set(e.turn, block);
      blocks.push(block);
      continue;
    }
    if (kind === "AGENT_MESSAGE_CHUNK" && last?.kind === kind) { last.text += e.text || ""; continue; }
    if (kind === "USER_MESSAGE" || kind === "AGENT_MESSAGE_CHUNK" || kind === "ERROR" || kind === "NOTICE") {
      blocks.push({ kind, text: e.text || p.message || "" });
    }
  }
  blocks.push(...queued.values());
  return { blocks, asked };
}

export function transcriptPanel({ session, ended }) {
  const element = h("div", { class: "transcript", "data-testid": "transcript" });
  // "Waiting for your permission" while the agent of the shown session waits on an answer.
  const waiting = h("div", { class: "muted", "data-testid": "permission-waiting" });
  let state = null;             // the transcript as last received (re-drawn while answering)
  let pending = "";             // the task's prompt, shown until the transcript has a message
  const answering = new Set();  // permission request ids whose answer is being sent
  const answerErrors = new Map(); // request id -> why the answer failed
  const opened = new Map();     // collapsible block id -> open, once the user toggled it

  async function answerPermission(requestId, outcome) {
    answering.add(requestId);
    answerErrors.delete(requestId);
    render(state);
    try {
      await post(`/v1/${session()}/permissionRequests/${requestId}:answer`, { outcome: `PERMISSION_OUTCOME_${outcome}` });
    } catch (e) {
      answerErrors.set(requestId, `Could not answer: ${e.message}`);
    } finally {
      answering.delete(requestId);
      render(state);
    }
  }

  function permissionBlock(b) {
    if (b.answer) {
      const late = b.answer.delivered === false;
      const how = ANSWERED[b.answer.answer] || b.answer.answer;
      const note = !late ? "" : b.answer.answer.startsWith("allow")
        ? " (the agent that asked had stopped: sent to the session as a message)"
        : " (the agent that asked had stopped)";
      return h("div", { class: "msg tool permission", "data-testid": "permission-outcome" }, `🔒 ${b.title}: ${how}${note}`);
    }
    const busy = answering.has(b.id) || ended();
    return h("div", { class: "msg permission pending", "data-testid": "permission-request", "data-request": b.id },
      h("strong", {}, "The agent asks permission: "), h("code", {}, b.title),
      b.cutOff ? h("p", { class: "muted", "data-testid": "permission-cut-off" },
        "The agent that asked stopped when the sandbox service restarted. Allowing now sends the session a message saying so.") : null,
      h("div", { class: "inline" }, ANSWERS.map(([outcome, label, style, testid]) => h("button", {
        class: style, "data-testid": testid, disabled: busy, onclick: () => answerPermission(b.id, outcome),
      }, label))),
      answerErrors.get(b.id) ? h("p", { class: "error", "data-testid": "permission-error" }, answerErrors.get(b.id)) : null);
  }

  // A <details> whose open state survives re-drawing once the user toggled it.
  function collapsible(id, byDefault, attrs, summary, ...body) {
    const open = opened.has(id) ? opened.get(id) : byDefault;
    // A click on the summary, not the `toggle` event (which also fires for the initial `open`).
    const details = h("details", { ...attrs, open }, h("summary", { onclick: () => opened.set(id, !details.open) }, summary), ...body);
    return details;
  }

  function toolBlock(b) {
    const done = ENDS.has(b.status);
    const failed = b.status === "failed";
    const end = toolEnd(b);
    const title = b.command && b.title === `run ${b.command}` ? "" : b.title;
    return collapsible(b.id, !done, {
      class: `msg toolcall ${done ? (failed ? "failed" : "done") : "running"}`, "data-testid": "tool-call", "data-status": b.status || "pending",
    }, [
      h("span", { class: "tool-icon" }, done ? (failed ? "✗" : "✓") : "⋯"), " ",
      title ? h("span", { "data-testid": "tool-title" }, title) : null,
      title && b.command ? " " : null,
      b.command ? h("code", { "data-testid": "tool-command" }, `$ ${b.command}`) : null, " ",
      h("span", { class: `tool-end ${failed ? "error" : "muted"}`, "data-testid": "tool-status" }, end),
    ], b.output
      ? h("pre", { class: "tool-output", "data-testid": "tool-output" }, b.output.replace(/\n$/, ""))
      : h("p", { class: "muted", "data-testid": "tool-output" }, done ? "(no output)" : "(no output yet)"));
  }

  function block(b) {
    if (b.kind === "PERMISSION") return permissionBlock(b);
    if (b.kind === "TOOL") return toolBlock(b);
    if (b.kind === "THOUGHT") {
      return collapsible(b.id, false, { class: "msg thought", "data-testid": "thought" }, "Thinking", h("div", {}, b.text));
    }
    if (b.kind === "PLAN") {
      return collapsible(b.id, false, { class: "msg plan", "data-testid": "plan" }, `Plan (${b.entries.length} ${b.entries.length === 1 ? "step" : "steps"})`,
        h("ol", {}, b.entries.map((x) => h("li", { class: `plan-${x.status}` }, x.content, x.status ? h("span", { class: "muted" }, ` ${x.status.replaceAll("_", " ")}`) : null))));
    }
    return h("div", { class: `msg ${CLASS[b.kind] || "agent"}`, "data-testid": TESTID[b.kind] || "transcript-entry" }, b.text);
  }

  function render(next) {
    if (!next) return;
    state = next;
    const events = [];
    for (const [name, resource] of next.items) if ((resource["@type"] || "").endsWith("SessionEvent")) events.push({ name, ...resource });
    events.sort((a, b) => Number(a.seq) - Number(b.seq));
    const { blocks, asked } = blocksOf(events);
    const live = [...asked.values()].filter((b) => !b.answer && !b.cutOff);
    waiting.textContent = live.length
      ? `Waiting for your permission: ${live.map((b) => b.title).join(", ")}` : "";
    const atBottom = element.scrollHeight - element.scrollTop - element.clientHeight < 40;
    mount(element, blocks.length ? blocks.map(block) : empty(next.error));
    if (atBottom || !element.dataset.drawn) element.scrollTop = element.scrollHeight;
    element.dataset.drawn = "1";
  }

  function empty(error) {
    if (error || !pending) return h("p", { class: "muted" }, error || "No messages yet.");
    return [h("div", { class: "msg user queued", "data-testid": "pending-prompt" }, pending),
      h("p", { class: "muted" }, "The task's prompt: sent to the agent as the first message once its session is ready.")];
  }

  function clear(prompt) {
    state = null;
    pending = prompt;
    waiting.textContent = "";
    delete element.dataset.drawn;
    mount(element, empty(""));
  }

  return { element, waiting, render, clear };
}
