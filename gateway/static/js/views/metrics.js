// A small debug panel of the stream's client-side metrics (stream.js): click the connection pill in
// the header to show or hide it. The same numbers are `window.foundryMetrics` in the console.

import { h, mount } from "../dom.js";
import { metricsSnapshot, onMetrics, reconnect } from "../stream.js";

export function metricsPanel(toggle) {
  const body = h("div", {});
  const panel = h("aside", { class: "card metrics", "data-testid": "stream-metrics", hidden: true },
    h("div", { class: "row" }, h("b", {}, "Stream metrics"),
      h("button", { class: "secondary small", "data-testid": "stream-reconnect", onclick: () => reconnect() }, "Reconnect now")),
    body);

  function render() {
    if (panel.hidden) return;
    const m = metricsSnapshot();
    const line = (label, value, testid) => h("div", {}, `${label}: `, h("span", { "data-testid": testid }, String(value)));
    mount(body,
      line("status", m.status, "metric-status"),
      line("connections created", m.connectionsCreated, "metric-created"),
      line("connections disposed", m.connectionsDisposed, "metric-disposed"),
      line("reconnect attempts", `${m.reconnectAttempts} (delays ${m.reconnectDelaysMs.slice(-6).map((d) => `${d / 1000} s`).join(", ") || "none"})`, "metric-reconnects"),
      line("stream ends", Object.entries(m.ends).map(([k, v]) => `${k} ${v}`).join(", ") || "none", "metric-ends"),
      line("refreshes", Object.entries(m.refreshCounts).map(([k, v]) => `${k} ${v}`).join(", ") || "none", "metric-refreshes"),
      h("div", {}, "subscriptions per key:"),
      h("ul", { "data-testid": "metric-subscriptions" },
        Object.entries(m.subscriptions).map(([topic, n]) => h("li", {}, `${topic} × ${n}`))),
      h("div", {}, "last refreshes:"),
      h("ul", {}, m.refreshes.slice(-8).reverse().map((r) => h("li", {}, `${r.why}: ${r.topic}`))));
  }

  toggle.style.cursor = "pointer";
  toggle.title = "Stream metrics";
  toggle.addEventListener("click", () => { panel.hidden = !panel.hidden; render(); });
  onMetrics(render);
  return panel;
}
