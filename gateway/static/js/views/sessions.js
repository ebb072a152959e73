// Session tabs of the task page: one tab per open session (unread marked •), a "+ New session" form
// with the agent and model (agent_picker.js), and for the shown session its model (ChangeModel),
// Rename and Close. Close asks first; the last open session cannot be closed (a task keeps one:
// CloseSession answers LAST_OPEN_SESSION), so its Close is disabled and says why.
//
// sessionTabs({ taskName, select, ended }) → { element, actions, render(sessions, selected, session) }:
// `select(name)` shows a session; render() draws the tabs (`sessions`: the task's SessionSummary
// list) and the actions of the shown session (`session`: its full Session, or null while loading).

import { post } from "../api.js";
import { h, lastSegment, mount } from "../dom.js";
import { agentPicker, modelSelect } from "./agent_picker.js";

export function sessionTabs({ taskName, select, ended }) {
  const element = h("div", { class: "tabs", "data-testid": "session-tabs" });
  const actions = h("div", { class: "session-actions inline", "data-testid": "session-actions" });
  let last = { sessions: [], selected: null, session: null };
  let creating = null;   // { picker, name } while the new-session form is open
  let renaming = null;   // { session, input } while renaming
  let closing = null;    // session name whose close is being confirmed
  let busy = false;
  let error = "";
  let model = null;      // { key, select } of the shown session's model select

  const redraw = () => render(last.sessions, last.selected, last.session);

  async function run(what, call) {
    busy = true;
    error = "";
    redraw();
    try {
      return await call();
    } catch (e) {
      error = `Could not ${what}: ${e.message}`;
      return null;
    } finally {
      busy = false;
      redraw();
    }
  }

  async function create() {
    const { agent, model: chosen } = creating.picker.values();
    const session = { agent, model: chosen };
    if (creating.name.value.trim()) session.displayName = creating.name.value.trim();
    const made = await run("create the session", () => post(`/v1/${taskName}/sessions`, { session, requestId: crypto.randomUUID() }));
    if (!made?.session) return;
    creating = null;
    select(made.session.name);
    redraw();
  }

  async function rename() {
    const displayName = renaming.input.value.trim();
    if (!displayName) { error = "A session needs a name."; redraw(); return; }
    const name = renaming.session;
    if (await run("rename the session", () => post(`/v1/${name}:rename`, { displayName }))) renaming = null;
    redraw();
  }

  async function close(name) {
    closing = null;
    const done = await run("close the session", () => post(`/v1/${name}:close`, {}));
    if (done && last.selected === name) {
      const next = last.sessions.find((s) => s.name !== name);
      if (next) select(next.name);
    }
  }

  function newSessionForm() {
    const { picker, name } = creating;
    return h("div", { class: "card new-session", "data-testid": "new-session-form" },
      h("strong", {}, "New session"), name, picker.element, picker.note,
      h("div", { class: "inline" },
        h("button", { "data-testid": "new-session-create", disabled: busy, onclick: create }, "Start session"), " ",
        h("button", { class: "secondary", "data-testid": "new-session-cancel", onclick: () => { creating = null; redraw(); } }, "Cancel")));
  }

  function sessionActions(session, open) {
    if (!session) return [];
    const off = ended();
    if (renaming?.session === session.name) {
      return [renaming.input,
        h("button", { class: "small", "data-testid": "session-rename-save", disabled: busy, onclick: rename }, "Save"),
        h("button", { class: "small secondary", "data-testid": "session-rename-cancel", onclick: () => { renaming = null; redraw(); } }, "Cancel")];
    }
    if (closing === session.name) {
      return [h("span", { class: "confirm-inline", "data-testid": "session-close-confirm" },
        `Close “${session.displayName || lastSegment(session.name)}”? Its agent stops; its transcript stays in the log. `),
      h("button", { class: "small danger", "data-testid": "session-close-yes", disabled: busy, onclick: () => close(session.name) }, "Close session"),
      h("button", { class: "small secondary", "data-testid": "session-close-no", onclick: () => { closing = null; redraw(); } }, "Cancel")];
    }
    const key = `${session.name}|${session.agent}|${session.model}`;
    if (model?.key !== key) {
      const name = session.name;
      const change = async (id) => {
        // Refused: draw the select again from the session's model.
        if (!await run("change the model", () => post(`/v1/${name}:changeModel`, { model: id }))) { model = null; redraw(); }
      };
      model = { key, select: modelSelect(session.agent, session.model, change) };
    }
    model.select.disabled = off || busy;
    const onlyOne = open <= 1;
    return [h("span", { class: "muted" }, `${lastSegment(session.agent) || "default agent"} · model `), model.select,
      h("button", { class: "small secondary", "data-testid": "session-rename", disabled: off, onclick: () => {
        renaming = { session: session.name, input: h("input", { "data-testid": "session-rename-input", value: session.displayName || "", "aria-label": "Session name",
          onkeydown: (e) => { if (e.key === "Enter") { e.preventDefault(); rename(); } else if (e.key === "Escape") { renaming = null; redraw(); } } }) };
        redraw();
        renaming.input.focus();
        renaming.input.select();
      } }, "Rename"),
      h("button", {
        class: "small secondary", "data-testid": "session-close", disabled: off || onlyOne,
        title: onlyOne ? "A task keeps one open session: this is the last one." : "Close this session",
        onclick: () => { closing = session.name; redraw(); },
      }, "Close"),
      onlyOne ? h("span", { class: "muted", "data-testid": "session-close-note" }, "the last open session cannot be closed") : null];
  }

  function render(sessions, selected, session) {
    last = { sessions, selected, session: session?.name === selected ? session : sessions.find((s) => s.name === selected) || null };
    mount(element, sessions.map((s) => h("button", {
      class: s.name === selected ? "active" : "", "data-testid": "session-tab", title: s.model ? `${lastSegment(s.agent)} · ${s.model}` : lastSegment(s.agent),
      onclick: () => select(s.name),
    }, s.displayName || lastSegment(s.name), s.unread ? " •" : "")),
    h("button", {
      class: "secondary new-tab", "data-testid": "session-new", disabled: ended() || Boolean(creating), title: "New session",
      onclick: () => {
        creating = { picker: agentPicker({ testid: "new-session" }), name: h("input", { "data-testid": "new-session-name", placeholder: "Name (optional)", "aria-label": "Session name" }) };
        redraw();
      },
    }, "+ New session"),
    creating ? newSessionForm() : null);
    mount(actions, sessionActions(last.session, sessions.length), error ? h("span", { class: "error", "data-testid": "session-error" }, error) : null);
  }

  return { element, actions, render };
}
