import { ensureCsrf, post } from "../api.js";
import { h, mount } from "../dom.js";

export function signInView(root, auth, done) {
  const error = h("p", { class: "error", "data-testid": "signin-error" });
  const login = h("input", { name: "login", placeholder: "your name", "data-testid": "signin-login", required: true });
  const form = h("form", {
    class: "inline",
    onsubmit: async (event) => {
      event.preventDefault();
      try {
        await ensureCsrf();
        await post("/v1/auth/dev/signIn", { login: login.value.trim() });
        done();
      } catch (e) {
        error.textContent = e.message;
      }
    },
  }, login, h("button", { type: "submit", "data-testid": "signin-submit" }, "Sign in"));
  mount(root, h("div", { class: "card" },
    h("h2", {}, "Sign in"),
    auth.devSignIn ? [h("p", { class: "muted" }, "Offline dev sign-in by name."), form] : null,
    auth.githubSignIn ? h("p", {}, h("a", { href: "/v1/auth/github/start?redirect=/" }, "Sign in with GitHub")) : null,
    !auth.devSignIn && !auth.githubSignIn ? h("p", {}, "No sign-in method is configured.") : null,
    error));
  return () => {};
}
