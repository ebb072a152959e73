// The workbench: a hash router over five views. Each view subscribes to the topics it shows and
// returns a cleanup that unsubscribes; the stream does the rest (no polling anywhere).

import { get } from "./api.js";
import { onConnection } from "./stream.js";
import { signInView } from "./views/signin.js";
import { orgsView } from "./views/orgs.js";
import { workbenchView } from "./views/workbench.js";
import { accountView } from "./views/account.js";

const app = document.getElementById("app");
let cleanup = () => {};
export const session = { signedIn: false };

onConnection((status) => {
  const el = document.getElementById("conn");
  el.textContent = status;
  el.className = `conn ${status}`;
});

async function route() {
  cleanup();
  cleanup = () => {};
  const auth = await get("/v1/auth/session");
  Object.assign(session, auth);
  document.getElementById("whoami").textContent = auth.signedIn ? auth.login : "";
  const path = location.hash.replace(/^#/, "") || "/orgs";
  if (!auth.signedIn) {
    cleanup = signInView(app, auth, () => navigate("/orgs"));
    return;
  }
  const parts = path.split("/").filter(Boolean);
  if (parts[0] === "account") {
    cleanup = accountView(app, { session });
  } else if (parts[0] === "o" && parts[1]) {
    cleanup = workbenchView(app, { org: parts[1], task: parts[2] === "t" ? parts[3] : null, navigate });
  } else {
    cleanup = orgsView(app, { navigate });
  }
}

export function navigate(path) {
  if (location.hash === `#${path}`) route();
  else location.hash = path;
}

window.addEventListener("hashchange", route);
route();
