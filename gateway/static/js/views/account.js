// Account: who is signed in, and a token for `foundryctl` made from this browser's session
// (POST /v1/auth/token). The token is shown once, here, and never stored by the page.

import { post } from "../api.js";
import { h, mount } from "../dom.js";

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
  return () => {};
}
