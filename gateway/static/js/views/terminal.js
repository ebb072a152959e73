// The task's terminal: an interactive shell in the task's sandbox (a tty process of the sandbox
// service, confined like the agent), drawn by xterm.js (vendored by `make vendor`; without it the
// panel says the renderer is missing).
//
// Output arrives on the tab's stream (topic `output:<process>`, ProcessLogChunk items with base64
// `data`, written in `offset` order, bytes already shown skipped); keystrokes go out by POST
// `:writeInput`, batched: while one POST is in flight the next keystrokes gather into the next one,
// so a typist costs one request per round trip. The size follows the panel (fit addon → `:resize`).
// Opening again reuses the sandbox's running terminal, so a reload finds the same shell.

import { get, post } from "../api.js";
import { h, mount } from "../dom.js";
import { items, subscribe } from "../stream.js";

const VENDOR = "/vendor/xterm";
const MAX_INPUT = 60 * 1024; // under the service's 64 KiB per write
let renderer = null;

// {Terminal, FitAddon}, or null when the vendored modules are not there.
function loadRenderer() {
  renderer ||= Promise.all([import(`${VENDOR}/xterm.js`), import(`${VENDOR}/addon-fit.js`)])
    .then(([xterm, fit]) => {
      document.head.append(h("link", { rel: "stylesheet", href: `${VENDOR}/xterm.css` }));
      return { Terminal: xterm.Terminal, FitAddon: fit.FitAddon };
    })
    .catch(() => null);
  return renderer;
}

const decode = (text) => Uint8Array.from(atob(text || ""), (c) => c.charCodeAt(0));
function encode(bytes) {
  let text = "";
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text);
}
function requestId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16)); // (randomUUID needs a secure context)
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

export function terminalPanel(container) {
  const status = h("span", { class: "muted", "data-testid": "terminal-status" });
  const button = h("button", { "data-testid": "terminal-open", onclick: () => open() }, "Open terminal");
  const end = h("button", { class: "secondary", "data-testid": "terminal-end", style: "display:none", onclick: () => kill() }, "End terminal");
  const screen = h("div", { "data-testid": "terminal", style: "display:none; height:360px; margin-top:8px" });
  container.append(h("div", { class: "card", "data-testid": "terminal-panel" },
    h("h3", {}, "Terminal"), h("div", {}, button, " ", end, " ", status), screen));

  button.disabled = true; // until `update` names the sandbox (a click before that would do nothing)
  let sandbox = null;
  let live = null; // {name, offs, observer} while a terminal runs in the panel
  let opening = false;
  let shown = null; // the xterm on screen (kept, read-only, after its terminal ended)
  const say = (text, testid = "terminal-status") => { status.textContent = text; status.dataset.testid = testid; };

  function stop(reason, dispose = false) {
    if (!live) return;
    for (const off of live.offs) off();
    live.observer.disconnect();
    live = null;
    if (dispose) { shown?.dispose(); shown = null; }
    end.style.display = "none";
    button.disabled = !sandbox;
    button.textContent = "Open a new terminal";
    say(reason);
  }

  async function findOrStart(term) {
    const listed = await get(`/v1/${sandbox}/processes?pageSize=100`);
    const running = (listed.processes || []).find((p) => p.tty && p.state === "PROCESS_STATE_RUNNING");
    if (running) {
      await post(`/v1/${running.name}:resize`, { terminalSize: { rows: term.rows, columns: term.cols } }).catch(() => {});
      return running;
    }
    const start = (command) => post(`/v1/${sandbox}/processes`, {
      process: { command, args: ["-i"], tty: true, interactive: true },
      terminalSize: { rows: term.rows, columns: term.cols }, requestId: requestId(),
    });
    try {
      return (await start("bash")).process;
    } catch (err) {
      if (err.code !== "FAILED_PRECONDITION") throw err;
      return (await start("sh")).process; // a sandbox without bash
    }
  }

  async function kill() {
    if (!live) return;
    end.disabled = true;
    try {
      await post(`/v1/${live.name}:kill`);
    } catch (err) {
      say(`The terminal could not be ended: ${err.message}`, "terminal-error");
    } finally {
      end.disabled = false;
    }
  }

  async function open() {
    if (live || opening || !sandbox) return;
    opening = true;
    try {
      await start();
    } finally {
      opening = false;
    }
  }

  async function start() {
    button.disabled = true;
    say("Opening…");
    const lib = await loadRenderer();
    if (!lib) {
      button.disabled = false;
      say("The terminal renderer (xterm.js) is missing: run `make vendor` (needs npm) and reload.", "terminal-missing");
      return;
    }
    screen.style.display = "";
    shown?.dispose();
    mount(screen);
    const term = shown = new lib.Terminal({ cursorBlink: true, fontSize: 13, scrollback: 5000 });
    const fit = new lib.FitAddon();
    term.loadAddon(fit);
    term.open(screen);
    fit.fit();
    let process;
    try {
      process = await findOrStart(term);
    } catch (err) {
      term.dispose();
      shown = null;
      screen.style.display = "none";
      button.disabled = false;
      say(`The terminal could not start: ${err.message}`, "terminal-error");
      return;
    }
    const name = process.name;
    let have = 0;          // bytes of output shown
    let pending = [];      // keystrokes not sent yet
    let sending = false;
    let resizeTimer = null;
    live = { name, offs: [], observer: new ResizeObserver(() => fit.fit()) };
    live.observer.observe(screen);

    async function flush() {
      if (sending) return;
      sending = true;
      try {
        while (pending.length && live) {
          const bytes = new TextEncoder().encode(pending.join(""));
          pending = [];
          for (let at = 0; at < bytes.length; at += MAX_INPUT) {
            await post(`/v1/${name}:writeInput`, { data: encode(bytes.subarray(at, at + MAX_INPUT)) });
          }
        }
      } catch (err) {
        if (err.code === "FAILED_PRECONDITION") stop("The terminal has ended.");
        else say(`Input was not delivered: ${err.message}`, "terminal-error");
      } finally {
        sending = false;
      }
    }
    const input = term.onData((data) => { pending.push(data); flush(); });
    const resized = term.onResize(({ rows, cols }) => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => post(`/v1/${name}:resize`, { terminalSize: { rows, columns: cols } }).catch(() => {}), 100);
    });
    live.offs.push(() => { input.dispose(); resized.dispose(); clearTimeout(resizeTimer); term.options.disableStdin = true; });

    live.offs.push(subscribe(`output:${name}`, (state) => {
      if (state.error) { say(`Output stopped: ${state.error}`, "terminal-error"); return; }
      const chunks = [...state.items.values()].sort((a, b) => Number(a.offset) - Number(b.offset));
      for (const chunk of chunks) {
        const offset = Number(chunk.offset || 0);
        const data = decode(chunk.data);
        if (offset + data.length > have) {
          term.write(data.subarray(Math.max(0, have - offset)));
          have = offset + data.length;
        }
      }
      state.items.clear(); // written: the screen holds them now (a long session would pile them up)
    }));
    live.offs.push(subscribe(`processes:${sandbox}`, (state) => {
      const mine = items(state, "Process").find((p) => p.name === name);
      if (mine && mine.state === "PROCESS_STATE_EXITED") {
        const how = mine.exitCode !== undefined ? `exit ${mine.exitCode}` : `signal ${mine.exitSignal}`;
        stop(`The terminal has ended (${how}).`);
      }
    }));
    say(`${process.command} in the sandbox`);
    button.textContent = "Open terminal";
    end.style.display = "";
    term.focus();
    screen.scrollIntoView({ block: "nearest" });
  }

  return {
    // The task's sandbox (null while it has none) and whether the task has ended (no new terminals).
    update(name, ended) {
      sandbox = ended ? null : name || null;
      if (!live && !opening) {
        button.disabled = !sandbox;
        if (!sandbox) say(ended ? "The task has ended: its sandbox is gone." : "The sandbox is not ready yet.");
        else if (status.dataset.testid === "terminal-status" && !status.textContent.startsWith("The terminal has ended")) say("");
      }
    },
    close() { stop("", true); },
  };
}
