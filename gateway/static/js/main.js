// The workbench: a hash router over five views. Each view subscribes to the topics it shows and
// returns a cleanup that unsubscribes; the stream does the rest (no polling anywhere).

import { get, post } from "./api.js";
import { h } from "./dom.js";
import { disconnect, onConnection, onSignedOut } from "./stream.js";
import { signInView } from "./views/signin.js";
import { orgsView } from "./views/orgs.js";
import { workbenchView } from "./views/workbench.js";
import { accountView } from "./views/account.js";
import { membersView } from "./views/members.js";
import { metricsPanel } from "./views/metrics.js";

const app = document.getElementById("app");
let cleanup = () => {};
export const session = { signedIn: false };

onConnection((status) => {
  const el = document.getElementById("conn");
  el.textContent = status;
  el.className = `conn ${status}`;
});

// Sign-out in the header: the server ends this session's streams in every tab (`signed_out`), and
// each tab then shows the sign-in view.
const signOut = h("button", {
  class: "secondary small", "data-testid": "sign-out", hidden: true,
  onclick: async () => {
    signOut.disabled = true;
    try { await post("/v1/auth/signOut"); } catch (_) { /* signed out already: show sign-in anyway */ }
    signOut.disabled = false;
    disconnect();
    navigate("/orgs");
  },
}, "Sign out");
document.getElementById("topbar").append(signOut);
onSignedOut(() => route());
document.body.append(metricsPanel(document.getElementById("conn")));

let routing = 0; // the latest route() call: an older one still awaiting the session gives way

async function route() {
  cleanup();
  cleanup = () => {};
  const mine = ++routing;
  const auth = await get("/v1/auth/session");
  // Two quick navigations: only the last builds a view (else the first view's subscriptions leak).
  if (mine !== routing) return;
  Object.assign(session, auth);
  document.getElementById("whoami").textContent = auth.signedIn ? auth.login : "";
  signOut.hidden = !auth.signedIn;
  const path = location.hash.replace(/^#/, "") || "/orgs";
  if (!auth.signedIn) {
    disconnect();
    cleanup = signInView(app, auth, () => navigate("/orgs"));
    return;
  }
  const parts = path.split("/").filter(Boolean);
  if (parts[0] === "account") {
    cleanup = accountView(app, { session });
  } else if (parts[0] === "o" && parts[1] && parts[2] === "members") {
    cleanup = membersView(app, { org: parts[1] });
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
