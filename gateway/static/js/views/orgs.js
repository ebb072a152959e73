// Organization picker (from the `app` topic) and "connect a local directory".

import { post } from "../api.js";
import { h, mount, short } from "../dom.js";
import { items, subscribe } from "../stream.js";

export function orgsView(root, { navigate }) {
  const list = h("ul", { "data-testid": "org-list" });
  const error = h("p", { class: "error" });
  // The background discovery of the user's GitHub organizations (after a GitHub sign-in).
  const discovery = h("p", { class: "muted", "data-testid": "github-discovery" });
  const rootPath = h("input", { placeholder: "/absolute/path/to/repositories", size: 40, "data-testid": "connect-path" });
  const displayName = h("input", { placeholder: "display name (optional)", "data-testid": "connect-name" });
  const form = h("form", {
    class: "inline",
    onsubmit: async (event) => {
      event.preventDefault();
      error.textContent = "";
      try {
        const response = await post("/v1/organizations:connectLocal", {
          rootPath: rootPath.value.trim(), displayName: displayName.value.trim(), requestId: crypto.randomUUID(),
        });
        navigate(`/o/${response.organization.name.split("/")[1]}`);
      } catch (e) {
        error.textContent = e.message;
      }
    },
  }, rootPath, displayName, h("button", { type: "submit", "data-testid": "connect-submit" }, "Connect"));

  const unsubscribe = subscribe("app", (state) => {
    const orgs = items(state, "Organization").filter((o) => o.name.startsWith("organizations/"));
    mount(list, orgs.length ? orgs.map((org) => h("li", {},
      h("a", { href: `#/o/${org.name.split("/")[1]}`, "data-testid": "org-link" }, org.displayName || org.name),
      " ", h("span", { class: "muted" }, short(org.syncStatus?.state, "SYNC_STATE_"))))
      : h("li", { class: "muted" }, state.status === "loading" ? "Loading…" : "No organizations yet."));
    const [found] = items(state, "GithubDiscovery");
    const label = {
      GITHUB_DISCOVERY_STATE_PENDING: "GitHub organizations: waiting to be discovered…",
      GITHUB_DISCOVERY_STATE_RUNNING: "GitHub organizations: discovering…",
      GITHUB_DISCOVERY_STATE_ERROR: `GitHub organizations could not be discovered: ${found?.message || "unknown error"}`,
    }[found?.state];
    discovery.textContent = label || "";
    discovery.className = found?.state === "GITHUB_DISCOVERY_STATE_ERROR" ? "error" : "muted";
  });

  mount(root,
    h("div", { class: "card" }, h("h2", {}, "Organizations"), discovery, list),
    h("div", { class: "card" }, h("h3", {}, "Connect a local directory of git repositories"), form, error));
  return unsubscribe;
}
