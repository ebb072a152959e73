// The tab's one multiplexed stream (Server-Sent Events) and the topic state it feeds.
//
// subscribe(topic, listener) -> unsubscribe. Topics are reference counted: the first listener adds
// the topic to the open stream (POST /v1/streams/{id}:subscribe), the last one removes it. Each
// topic's state is a Map(resource name -> resource) replaced by `snapshot` and changed by `upsert`
// and `delete`; listeners get (state, status) after every change. The stream resumes on its own:
// the browser sends Last-Event-ID after a network error, and after an `end` frame we reopen with
// ?resume=<resume_from>. Nothing polls.

const listeners = new Map();   // topic -> Set(listener)
const states = new Map();      // topic -> {items: Map, status, error}
let source = null;
let streamId = null;
let serverTopics = new Set();
let lastId = "";
let retryTimer = null;
const statusListeners = new Set();

function topicState(topic) {
  if (!states.has(topic)) states.set(topic, { items: new Map(), status: "loading", error: null });
  return states.get(topic);
}

function notify(topic) {
  const state = topicState(topic);
  for (const listener of listeners.get(topic) || []) listener(state);
}

function setConnection(status) {
  for (const listener of statusListeners) listener(status);
}

export function onConnection(listener) {
  statusListeners.add(listener);
  return () => statusListeners.delete(listener);
}

function open(resume) {
  if (source) source.close();
  const url = new URL("/v1/stream", location.origin);
  // With a position the server resumes its topics and adds any listed topic it lacks: a reopen after
  // a `:subscribe` that reached another gateway replica carries the new topics itself.
  if (resume) url.searchParams.set("resume", resume);
  for (const topic of listeners.keys()) url.searchParams.append("topic", topic);
  source = new EventSource(url);
  const on = (name, fn) => source.addEventListener(name, (event) => {
    if (event.lastEventId) lastId = event.lastEventId;
    fn(JSON.parse(event.data || "{}"));
  });
  on("hello", (data) => { streamId = data.stream; setConnection("live"); });
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
    notify(data.topic);
  });
  on("upsert", (data) => {
    const state = topicState(data.topic);
    state.items.set(data.item.name, data.item.resource);
    notify(data.topic);
  });
  on("delete", (data) => { topicState(data.topic).items.delete(data.name); notify(data.topic); });
  on("reset", (data) => { topicState(data.topic).status = "loading"; notify(data.topic); });
  on("status", (data) => { topicState(data.topic).status = data.state; notify(data.topic); });
  on("error", (data) => {
    if (!data.topic) return;
    const state = topicState(data.topic);
    state.error = `${data.code}: ${data.message}`;
    state.status = "error";
    notify(data.topic);
  });
  on("end", (data) => {
    source.close();
    source = null;
    setConnection("reconnecting");
    open(data.resume_from);
  });
  source.onerror = () => {
    if (source && source.readyState === EventSource.CLOSED) {
      // The server refused the reconnect (e.g. restarting): reopen from where we were.
      setConnection("reconnecting");
      clearTimeout(retryTimer);
      retryTimer = setTimeout(() => open(lastId), 1000);
    } else {
      setConnection("reconnecting");
    }
  };
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
    if (!source) open(lastId);
    else change("subscribe", [topic]);
  }
  set.add(listener);
  listener(topicState(topic));
  return () => {
    set.delete(listener);
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
