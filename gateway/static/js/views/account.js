// Account: who is signed in, a token for `foundryctl` made from this browser's session
// (POST /v1/auth/token; shown once, here, and never stored by the page), and the settings of the
// user's organizations: how their agents' permission requests are answered (UpdateOrganization
// `permission_policy`; admins and owners only, the service says so otherwise) and their model API
// keys (write-only: set or clear one per variable; which are set is shown, never a value).

import { api, post } from "../api.js";
import { h, mount } from "../dom.js";
import { items, subscribe } from "../stream.js";

const POLICIES = [
  ["PERMISSION_POLICY_ALLOW", "Allow inside the sandbox (default)"],
  ["PERMISSION_POLICY_ASK", "Ask me (the request waits in the transcript)"],
  ["PERMISSION_POLICY_REJECT", "Reject every request"],
];

const KEY_VARIABLES = ["ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "OPENAI_API_KEY", "CODEX_API_KEY"];

// Model API keys of one organization: write-only (the list shows which variables are set and when,
// never a value; the input is emptied as soon as it was sent). Built once per organization so a key
// being typed survives the app stream's redraws.
function modelKeys(org) {
  const id = org.name.split("/")[1];
  const list = h("ul", { "data-testid": "model-keys", "data-org": id });
  const error = h("p", { class: "error", "data-testid": "model-keys-error" });
  const variable = h("select", { "data-testid": "model-key-variable" },
    KEY_VARIABLES.map((v) => h("option", { value: v }, v)));
  const value = h("input", {
    type: "password", autocomplete: "off", placeholder: "paste the key", "data-testid": "model-key-value",
  });
  async function refresh() {
    try {
      const { modelCredentials = [] } = await api("GET", `/v1/${org.name}/modelCredentials`);
      mount(list, modelCredentials.length ? modelCredentials.map((c) => h("li", { "data-testid": "model-key", "data-variable": c.variable },
        h("code", {}, c.variable), ` set ${new Date(c.updateTime).toLocaleString()} `,
        h("button", { class: "secondary", "data-testid": "model-key-clear", onclick: () => clear(c.variable) }, "Clear")))
        : h("li", { class: "muted", "data-testid": "model-keys-none" }, "None set: agents use the service's own key, if any."));
    } catch (e) {
      error.textContent = `Could not list them: ${e.message}`;
    }
  }
  async function save() {
    const key = value.value.trim();
    value.value = "";
    error.textContent = "";
    if (!key) return;
    try {
      await api("POST", `/v1/${org.name}/modelCredentials`, { variable: variable.value, value: key });
    } catch (e) {
      error.textContent = `Could not set it: ${e.message}`;
    }
    await refresh();
  }
  async function clear(name) {
    error.textContent = "";
    try {
      await api("DELETE", `/v1/${org.name}/modelCredentials/${name}`);
    } catch (e) {
      error.textContent = `Could not clear it: ${e.message}`;
    }
    await refresh();
  }
  const panel = h("div", { class: "model-keys", "data-testid": "model-keys-panel", "data-org": id },
    h("p", {}, "Model API keys (admins; write-only, given only to this organization's agents):"),
    list,
    h("div", { class: "row" }, variable, value,
      h("button", { "data-testid": "model-key-save", onclick: save }, "Set key")),
    error);
  refresh();
  return panel;
}

function organizationSettings() {
  const list = h("div", { "data-testid": "org-settings" });
  const keyPanels = new Map(); // organization name -> its model API keys panel (kept across redraws)
  const errors = new Map(); // organization name -> why the last change failed
  let last = null;
  async function change(org, policy) {
    errors.delete(org.name);
    try {
      await api("PATCH", `/v1/${org.name}?updateMask=permissionPolicy`, { permissionPolicy: policy });
    } catch (e) {
      errors.set(org.name, `Could not change it: ${e.message}`);
      if (last) render(last);
    }
  }
  function render(state) {
    last = state;
    const orgs = items(state, "Organization").filter((o) => o.name.startsWith("organizations/"));
    mount(list, orgs.length ? orgs.map((org) => {
      const current = org.permissionPolicy && org.permissionPolicy !== "PERMISSION_POLICY_UNSPECIFIED"
        ? org.permissionPolicy : "PERMISSION_POLICY_ALLOW";
      const select = h("select", {
        "data-testid": "permission-policy", "data-org": org.name.split("/")[1],
        onchange: (e) => change(org, e.target.value),
      }, POLICIES.map(([value, label]) => h("option", { value, selected: value === current }, label)));
      if (!keyPanels.has(org.name)) keyPanels.set(org.name, modelKeys(org));
      return h("div", {},
        h("div", { class: "row" },
          h("label", {}, h("strong", {}, org.displayName || org.name), " — agents' permission requests: ", select),
          errors.get(org.name) ? h("p", { class: "error", "data-testid": "permission-policy-error" }, errors.get(org.name)) : null),
        keyPanels.get(org.name));
    }) : h("p", { class: "muted" }, state.status === "loading" ? "Loading…" : "No organizations yet."));
  }
  return { list, off: subscribe("app", render) };
}

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // No clipboard API (plain http on a non-local host): copy through a selected text area.
    const area = h("textarea", { readonly: true }, text);
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  const label = button.textContent;
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = label; }, 1500);
}

export function accountView(root, { session }) {
  const result = h("div", { "data-testid": "cli-token-result" });
  const error = h("p", { class: "error", "data-testid": "cli-token-error" });
  const create = h("button", {
    "data-testid": "cli-token-create",
    onclick: async () => {
      error.textContent = "";
      create.disabled = true;
      try {
        const { token, expireTime } = await post("/v1/auth/token", {});
        const command = `foundryctl login --token ${token}`;
        const copyToken = h("button", { class: "secondary", "data-testid": "cli-token-copy" }, "Copy token");
        copyToken.addEventListener("click", () => copy(token, copyToken));
        const copyCommand = h("button", { class: "secondary", "data-testid": "cli-token-copy-command" }, "Copy command");
        copyCommand.addEventListener("click", () => copy(command, copyCommand));
        mount(result,
          h("p", {}, "Your token (shown only now; make a new one any time):"),
          h("pre", { class: "token", "data-testid": "cli-token" }, token),
          h("div", { class: "row" }, copyToken),
          h("p", {}, "In a terminal:"),
          h("pre", { class: "token", "data-testid": "cli-token-command" }, command),
          h("div", { class: "row" }, copyCommand),
          h("p", { class: "muted", "data-testid": "cli-token-expiry" },
            `Valid until ${new Date(expireTime).toLocaleString()} (12 hours). Signing out does not revoke it: `,
            "treat it like a password, and delete ~/.config/foundry/token to sign the CLI out. ",
            "To keep it out of your shell history, run ", h("code", {}, "foundryctl login --token -"),
            " and paste it."));
      } catch (e) {
        error.textContent = e.message;
      } finally {
        create.disabled = false;
      }
    },
  }, "Create CLI token");
  mount(root,
    h("div", { class: "card" }, h("h2", {}, "Account"),
      h("p", { "data-testid": "account-user" }, `Signed in as ${session.login} (${session.user})`)),
    h("div", { class: "card", "data-testid": "cli-token-card" },
      h("h3", {}, "CLI token"),
      h("p", { class: "muted" }, "A token that lets foundryctl act as you, valid for 12 hours."),
      create, error, result));
  const settings = organizationSettings();
  root.append(h("div", { class: "card", "data-testid": "org-settings-card" },
    h("h3", {}, "Organization settings"),
    h("p", { class: "muted" }, "When an agent asks permission (to edit a file, run a command): allow it inside the sandbox, ask you in the task's transcript, or reject it. Applies to new sessions, and to open ones from their next message."),
    settings.list));
  return settings.off;
}
