// The tab's one multiplexed stream (Server-Sent Events) and the topic state it feeds.
//
// subscribe(topic, listener) -> unsubscribe. Topics are reference counted: the first listener adds
// the topic to the open stream (POST /v1/streams/{id}:subscribe), the last one removes it. Each
// topic's state is a Map(resource name -> resource) replaced by `snapshot` and changed by `upsert`
// and `delete`; listeners get (state, status) after every change. `state.code` is the gRPC code of
// the last `error` (the topic failed for good) or `status` reconnecting frame (e.g. NOT_FOUND while
// the gateway retries), null once the topic is live again. The stream resumes on its own: after an
// `end` frame we reopen at once with ?resume=<resume_from>; after a connection error we close it and
// reopen with ?resume=<last event id> after min(1 s × 2^attempt, 30 s) (attempt counted from 0,
// reset by the next `hello`). An `end` with reason `signed_out` is final. Nothing polls.
//
// Client-side subscription metrics (seed 00, workstream 6), read with `window.foundryMetrics` or
// metricsSnapshot(), shown by views/metrics.js: connections created and disposed, reconnect
// attempts and their delays, stream ends by reason, listeners per topic key, and why each topic's
// state was replaced (`bootstrap`: first snapshot after subscribing; `reconnect`: a snapshot after the
// stream was reopened; `reset`: the server voided the topic) or changed (`event`: upsert/delete).

const listeners = new Map();   // topic -> Set(listener)
const states = new Map();      // topic -> {items: Map, status, error}
let source = null;
let streamId = null;
let serverTopics = new Set();
let lastId = "";
let retryTimer = null;
const statusListeners = new Set();
const signedOutListeners = new Set();
const metricListeners = new Set();
const BACKOFF_BASE_MS = 1000;
const BACKOFF_MAX_MS = 30_000;
const LOG_SIZE = 50;
const metrics = {
  connectionsCreated: 0, connectionsDisposed: 0, reconnectAttempts: 0, attempt: 0,
  reconnectDelaysMs: [], ends: {}, refreshes: [], refreshCounts: {}, status: "offline",
};

function log(list, entry) {
  list.push(entry);
  if (list.length > LOG_SIZE) list.shift();
}

function metricsChanged() {
  for (const listener of metricListeners) listener();
}

// Why a topic's state changed: counted per reason, and the snapshots logged with their topic.
function refreshed(topic, why) {
  metrics.refreshCounts[why] = (metrics.refreshCounts[why] || 0) + 1;
  if (why !== "event") log(metrics.refreshes, { topic, why, at: new Date().toISOString() });
  metricsChanged();
}

export function metricsSnapshot() {
  const subscriptions = {};
  for (const [topic, set] of listeners) subscriptions[topic] = set.size;
  return structuredClone({ ...metrics, open: Boolean(source), subscriptions });
}

export function onMetrics(listener) {
  metricListeners.add(listener);
  return () => metricListeners.delete(listener);
}

Object.defineProperty(window, "foundryMetrics", { get: metricsSnapshot, configurable: true });

function topicState(topic) {
  if (!states.has(topic)) states.set(topic, { items: new Map(), status: "loading", error: null, code: null, snapshots: 0, why: null });
  return states.get(topic);
}

function notify(topic) {
  const state = topicState(topic);
  for (const listener of listeners.get(topic) || []) listener(state);
}

function setConnection(status) {
  metrics.status = status;
  for (const listener of statusListeners) listener(status);
  metricsChanged();
}

function dispose() {
  if (!source) return;
  source.close();
  source = null;
  metrics.connectionsDisposed += 1;
}

// Called when the server ends the stream because the session signed out (in this tab or another).
export function onSignedOut(listener) {
  signedOutListeners.add(listener);
  return () => signedOutListeners.delete(listener);
}

// Close the stream and forget its position and topics (sign-out: the next user starts afresh).
export function disconnect() {
  clearTimeout(retryTimer);
  dispose();
  metrics.attempt = 0;
  streamId = null;
  lastId = "";
  serverTopics = new Set();
  states.clear();
  setConnection("offline");
}

export function onConnection(listener) {
  statusListeners.add(listener);
  return () => statusListeners.delete(listener);
}

// Reopen now (the debug panel's "Reconnect now"); the usual backoff applies if that fails.
export function reconnect() {
  clearTimeout(retryTimer);
  open(lastId);
}

function open(resume) {
  clearTimeout(retryTimer);
  dispose();
  // A topic that had its snapshot and gets another on this connection: a refresh because of it.
  for (const state of states.values()) if (state.snapshots) state.why = state.why || "reconnect";
  const url = new URL("/v1/stream", location.origin);
  // With a position the server resumes its topics and adds any listed topic it lacks: a reopen after
  // a `:subscribe` that reached another gateway replica carries the new topics itself.
  if (resume) url.searchParams.set("resume", resume);
  for (const topic of listeners.keys()) url.searchParams.append("topic", topic);
  const es = new EventSource(url);
  source = es;
  metrics.connectionsCreated += 1;
  metricsChanged();
  const on = (name, fn) => source.addEventListener(name, (event) => {
    if (event.lastEventId) lastId = event.lastEventId;
    fn(JSON.parse(event.data || "{}"));
  });
  on("hello", (data) => {
    streamId = data.stream;
    metrics.attempt = 0;
    setConnection("live");
  });
  on("subscribed", (data) => {
    serverTopics = new Set(data.topics);
    const missing = [...listeners.keys()].filter((t) => !serverTopics.has(t) && !topicState(t).error);
    const extra = [...serverTopics].filter((t) => !listeners.has(t));
    if (missing.length) change("subscribe", missing);
    if (extra.length) change("unsubscribe", extra);
  });
  on("snapshot", (data) => {
    const state = topicState(data.topic);
    state.items = new Map(data.items.map((item) => [item.name, item.resource]));
    state.status = "live";
    state.code = null;
    refreshed(data.topic, state.why || (state.snapshots ? "server" : "bootstrap"));
    state.snapshots += 1;
    state.why = null;
    notify(data.topic);
  });
  on("upsert", (data) => {
    const state = topicState(data.topic);
    state.items.set(data.item.name, data.item.resource);
    refreshed(data.topic, "event");
    notify(data.topic);
  });
  on("delete", (data) => { topicState(data.topic).items.delete(data.name); refreshed(data.topic, "event"); notify(data.topic); });
  on("reset", (data) => {
    const state = topicState(data.topic);
    state.status = "loading";
    state.why = "reset";
    notify(data.topic);
  });
  on("status", (data) => {
    const state = topicState(data.topic);
    state.status = data.state;
    state.code = data.state === "live" ? null : data.code || null;
    notify(data.topic);
  });
  on("error", (data) => {
    if (!data.topic) return;
    const state = topicState(data.topic);
    state.error = `${data.code}: ${data.message}`;
    state.code = data.code;
    state.status = "error";
    notify(data.topic);
  });
  on("end", (data) => {
    metrics.ends[data.reason] = (metrics.ends[data.reason] || 0) + 1;
    if (data.reason === "signed_out") {
      // Signed out (here or in another tab): the session is gone, so there is nothing to resume.
      disconnect();
      for (const listener of signedOutListeners) listener();
      return;
    }
    dispose();
    setConnection("reconnecting");
    open(data.resume_from);
  });
  source.onerror = (event) => {
    // A topic's `error` frame is an SSE event named "error" too: it reaches this handler as a
    // MessageEvent on an open stream, and says nothing about the connection.
    if (event instanceof MessageEvent || es !== source) return;
    // The connection broke or was refused (e.g. the gateway restarting). We reconnect ourselves,
    // not the browser (its retry is a fixed ~3 s): from where we were, after an exponential backoff.
    dispose();
    const delay = Math.min(BACKOFF_BASE_MS * 2 ** metrics.attempt, BACKOFF_MAX_MS);
    metrics.attempt += 1;
    metrics.reconnectAttempts += 1;
    log(metrics.reconnectDelaysMs, delay);
    setConnection("reconnecting");
    clearTimeout(retryTimer);
    retryTimer = setTimeout(() => open(lastId), delay);
    checkSignedIn();
  };
}

// A stream refused because the session is gone (expired, or signed out while this tab was not
// connected) would be retried forever: ask once per failed attempt, and end it as a sign-out.
async function checkSignedIn() {
  try {
    const response = await fetch("/v1/auth/session", { credentials: "same-origin" });
    if (!response.ok || (await response.json()).signedIn !== false) return;
  } catch (_) { return; /* the gateway is unreachable: keep retrying */ }
  metrics.ends.session_gone = (metrics.ends.session_gone || 0) + 1;
  disconnect();
  for (const listener of signedOutListeners) listener();
}

async function change(verb, topics) {
  if (!streamId) return;
  try {
    const response = await fetch(`/v1/streams/${streamId}:${verb}`, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json",
                 "X-CSRF-Token": (document.cookie.match(/(?:^|;\s*)foundry_csrf=([^;]+)/) || [])[1] || "" },
      body: JSON.stringify({ topics }),
    });
    // Our stream lives on another gateway replica: reopen here with every topic we listen to. (An
    // unsubscribe that misses only leaves an unused topic on the stream until it is reopened.)
    if (response.status === 404 && verb === "subscribe") open(lastId);
  } catch (_) { /* the stream's own reconnect will resubscribe */ }
}

export function subscribe(topic, listener) {
  let set = listeners.get(topic);
  if (!set) {
    set = new Set();
    listeners.set(topic, set);
    const state = topicState(topic);
    state.error = null;
    state.code = null;
    if (!source) open(lastId);
    else change("subscribe", [topic]);
  }
  set.add(listener);
  metricsChanged();
  listener(topicState(topic));
  return () => {
    set.delete(listener);
    metricsChanged();
    if (set.size === 0) {
      listeners.delete(topic);
      states.delete(topic);
      change("unsubscribe", [topic]);
    }
  };
}

export function items(state, type) {
  const out = [];
  for (const [name, resource] of state.items) {
    if (!type || (resource["@type"] || "").endsWith(type)) out.push({ name, ...resource });
  }
  return out;
}
