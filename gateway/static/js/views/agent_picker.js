// Agent and model choice (ListAgents, GET /v1/agents): an agent select (unavailable agents are shown
// disabled with the reason) and a model select holding the chosen agent's models, its default first.
// Empty values mean "the mesh's default agent" and "the agent's default model".

import { get } from "../api.js";
import { h, lastSegment, mount } from "../dom.js";

let agentsOnce = null;

// The mesh's agents, fetched once per page load (the list changes only with the deployment).
export function listAgents() {
  agentsOnce ??= get("/v1/agents").then((r) => r.agents || []).catch((e) => { agentsOnce = null; throw e; });
  return agentsOnce;
}

function modelOptions(agent) {
  const models = agent?.models || [];
  if (!models.length) return [h("option", { value: "" }, "default model")];
  return models.map((m, i) => h("option", { value: i === 0 ? "" : m.id }, i === 0 ? `${m.label || m.id} (default)` : m.label || m.id));
}

// { agent, model, element, values() }: values() → { agent: "agents/x" | "", model: "id" | "" }.
// `testid` prefixes the selects' data-testids (`<testid>-agent`, `<testid>-model`).
export function agentPicker({ testid = "new-task" } = {}) {
  const agent = h("select", { "data-testid": `${testid}-agent`, "aria-label": "Agent" });
  const model = h("select", { "data-testid": `${testid}-model`, "aria-label": "Model" });
  const note = h("p", { class: "muted", "data-testid": "agent-note" });
  let agents = [];
  const chosen = () => agents.find((a) => a.name === agent.value) || agents.find((a) => a.default);
  const refresh = () => {
    mount(model, modelOptions(chosen()));
    const a = chosen();
    note.textContent = a && !a.available ? `${a.displayName || lastSegment(a.name)}: ${a.unavailableReason}` : "";
  };
  agent.addEventListener("change", refresh);
  listAgents().then((list) => {
    agents = list;
    mount(agent, list.map((a) => h("option", {
      value: a.default ? "" : a.name, disabled: !a.available && !a.default,
      title: a.unavailableReason || "",
    }, `${a.displayName || lastSegment(a.name)}${a.default ? " (default)" : ""}${a.available ? "" : " — unavailable"}`)));
    refresh();
  }).catch((e) => { note.textContent = `agents: ${e.message}`; });
  return {
    element: h("div", { class: "picker" }, agent, model),
    note,
    values: () => ({ agent: agent.value, model: model.value }),
  };
}

// A model select for an existing session of `agentName` (empty: the default agent); `current` is the
// session's model. Calls onChange(modelId) when the user picks another one.
export function modelSelect(agentName, current, onChange) {
  const select = h("select", { "data-testid": "session-model", "aria-label": "Model" });
  listAgents().then((list) => {
    const a = list.find((x) => x.name === agentName) || list.find((x) => x.default);
    const ids = (a?.models || []).map((m) => m.id);
    if (current && !ids.includes(current)) ids.push(current);
    if (!ids.length) { select.hidden = true; return; }
    mount(select, ids.map((id) => h("option", { value: id }, id)));
    select.value = current || a?.defaultModel || ids[0];
  }).catch(() => { select.hidden = true; });
  select.addEventListener("change", () => onChange(select.value));
  return select;
}
