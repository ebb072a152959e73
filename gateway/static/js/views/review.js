// The task's Review panel: every change of the task's branch against its base (the sandbox computes
// the diff in the background; this only renders the task's cached git state). Diffs are drawn by
// diff2html (vendored from npm by `make vendor`; without it, plain text), one collapsible block per
// file under its full path; a tree of the changed files shows one file's diff when clicked; each
// file can be reverted to the base after a confirmation (RevertFile, queued on the task). The Files
// tree (`files`) is the whole checkout: directories open lazily, changed files are marked and open
// their diff in Review; an unchanged file opens its contents there (GetFileContent, read from the
// sandbox as it is now: at most 1 MiB, binary files only named with their size), with line numbers.

import { get, post } from "../api.js";
import { h, mount, short } from "../dom.js";

const D2H = { drawFileList: false, outputFormat: "line-by-line", matching: "lines", colorScheme: "dark" };

function diffBody(diff) {
  const text = diff?.unifiedDiff || "";
  if (!text) return h("p", { class: "muted" }, "(no diff)");
  if (!window.Diff2Html) return h("pre", { class: "diff", "data-testid": "plain-diff" }, text);
  const box = h("div", { class: "d2h" });
  box.innerHTML = window.Diff2Html.html(text, D2H); // diff2html escapes the diff's text
  return box;
}

// {name, path, children: Map, change} from objects with a `path`, directories first.
function treeOf(changes) {
  const root = { children: new Map() };
  for (const c of changes) {
    let node = root;
    const parts = c.path.split("/");
    parts.forEach((part, i) => {
      const path = parts.slice(0, i + 1).join("/");
      if (!node.children.has(part)) node.children.set(part, { name: part, path, children: new Map() });
      node = node.children.get(part);
    });
    node.change = c;
  }
  return root;
}

export function reviewPanel(taskName) {
  const status = h("div", { class: "muted", "data-testid": "review-status" });
  const tree = h("ul", { class: "tree", "data-testid": "change-tree" });
  const viewer = h("div", { class: "viewer", "data-testid": "diff-viewer" });
  const element = h("div", { class: "card review", "data-testid": "changes" },
    h("h3", {}, "Review"), status, h("div", { class: "review-body" }, tree, viewer));
  const files = h("ul", { class: "tree files", "data-testid": "file-tree" });
  const openDirs = new Set();

  let git = null;
  let reverts = [];
  let readOnly = false;
  let focus = null;     // the path shown alone, or null for every change
  let asking = null;    // the path whose revert is being confirmed
  const collapsed = new Set();
  let drawn = "";       // what the last render drew, so task updates that change nothing keep the DOM
  let error = "";
  let sandbox = null;   // the task's sandbox, whose checkout unchanged files are read from
  let content = null;   // the unchanged file shown: {key, state: loading | done | error, file, error}

  async function load(path, key) {
    content = { key, state: "loading" };
    let next;
    try {
      next = { key, state: "done", file: await get(`/v1/${sandbox}/fileContent?path=${encodeURIComponent(path)}`) };
    } catch (e) {
      next = { key, state: "error", error: e.message };
    }
    if (content?.key !== key) return; // another file (or a newer state) was asked for meanwhile
    content = next;
    draw();
  }

  function bytesOf(base64) {
    return Uint8Array.from(atob(base64 || ""), (c) => c.charCodeAt(0));
  }

  // An unchanged file's contents: monospace with line numbers, or a note for binary and cut files.
  function contentBlock(path, base) {
    const head = h("p", { class: "muted", "data-testid": "unchanged-file" },
      h("code", { class: "path" }, path), ` is unchanged against ${base}.`);
    if (!sandbox) return [head, h("p", { class: "muted" }, "The task has no sandbox to read it from.")];
    const key = JSON.stringify([sandbox, path, git?.computeTime, git?.headCommit]);
    if (content?.key !== key) load(path, key);
    if (content.state === "loading") return [head, h("p", { class: "muted" }, "Loading…")];
    if (content.state === "error") return [head, h("p", { class: "error", "data-testid": "file-error" }, `Could not show ${path}: ${content.error}`)];
    const file = content.file;
    const size = Number(file.sizeBytes || 0);
    const unit = (n) => `${n.toLocaleString()} byte${n === 1 ? "" : "s"}`;
    if (file.binary) return [head, h("p", { class: "muted", "data-testid": "file-note" }, `Binary file, ${unit(size)}; not shown.`)];
    const text = new TextDecoder().decode(bytesOf(file.content));
    if (!text) return [head, h("p", { class: "muted", "data-testid": "file-note" }, "(empty file)")];
    const lines = text.split("\n");
    if (lines.at(-1) === "") lines.pop();
    return [head,
      file.truncated ? h("p", { class: "muted", "data-testid": "file-note" }, `Showing the first 1 MiB of ${unit(size)}.`) : null,
      h("pre", { class: "file-view", "data-testid": "file-content", "data-path": path },
        lines.map((line) => h("span", { class: "line" }, line)))];
  }

  async function revert(path) {
    asking = null;
    error = "";
    try {
      await post(`/v1/${taskName}:revertFile`, { path, requestId: crypto.randomUUID() });
    } catch (e) {
      error = `Could not revert ${path}: ${e.message}`;
    }
    draw();
  }

  function revertControl(path) {
    const pending = reverts.find((r) => r.path === path && r.state === "FILE_REVERT_STATE_PENDING");
    if (pending) return h("span", { class: "muted" }, "reverting…");
    if (readOnly) return null;
    if (asking === path) {
      return h("span", { class: "confirm-inline", "data-testid": "revert-confirm" },
        `Revert ${path} to ${git.baseBranch || "the base"}? Its committed and uncommitted changes are undone. `,
        h("button", { class: "danger", "data-testid": "revert-yes", onclick: (e) => { e.preventDefault(); revert(path); } }, "Revert"), " ",
        h("button", { class: "secondary", "data-testid": "revert-no", onclick: (e) => { e.preventDefault(); asking = null; draw(); } }, "Cancel"));
    }
    return h("button", { class: "secondary small", "data-testid": "revert", onclick: (e) => { e.preventDefault(); asking = path; draw(); } }, "Revert");
  }

  function fileBlock(c, diff) {
    const failed = reverts.find((r) => r.path === c.path && r.state === "FILE_REVERT_STATE_FAILED");
    return h("details", {
      open: !collapsed.has(c.path), class: "file", "data-testid": "change", "data-path": c.path,
      ontoggle: (e) => { if (e.target.open) collapsed.delete(c.path); else collapsed.add(c.path); },
    },
      h("summary", {},
        h("code", { class: "path", "data-testid": "change-path" }, c.path), " ",
        h("span", { class: `kind ${short(c.type, "FILE_CHANGE_TYPE_")}` }, short(c.type, "FILE_CHANGE_TYPE_")), " ",
        h("span", { class: "add" }, `+${c.addedLines || 0}`), " ", h("span", { class: "del" }, `−${c.removedLines || 0}`), " ",
        revertControl(c.path)),
      failed ? h("p", { class: "error" }, `Revert failed: ${failed.errorMessage}`) : null,
      diff?.truncated ? h("p", { class: "muted" }, "The diff is cut at the size limit.") : null,
      diffBody(diff));
  }

  function treeItems(node) {
    const entries = [...node.children.values()].sort((a, b) =>
      (a.change ? 1 : 0) - (b.change ? 1 : 0) || a.name.localeCompare(b.name));
    return entries.map((n) => n.change
      ? h("li", {},
          h("a", {
            href: "#", class: `file ${n.path === focus ? "active" : ""}`, "data-testid": "tree-file", "data-path": n.path, title: n.path,
            onclick: (e) => { e.preventDefault(); focus = n.path; draw(); },
          }, n.name), " ",
          h("span", { class: "add" }, `+${n.change.addedLines || 0}`), " ", h("span", { class: "del" }, `−${n.change.removedLines || 0}`))
      : h("li", {}, h("details", { open: true }, h("summary", { class: "dir" }, `${n.name}/`), h("ul", {}, treeItems(n)))));
  }

  function show(path) {
    focus = path;
    draw();
    element.scrollIntoView({ block: "nearest" });
  }

  // One level of the checkout's tree; a directory's children are drawn when it is first opened.
  function fileItems(node, changed) {
    const entries = [...node.children.values()].sort((a, b) =>
      (a.children.size ? 0 : 1) - (b.children.size ? 0 : 1) || a.name.localeCompare(b.name));
    return entries.map((n) => {
      if (!n.children.size) {
        const c = changed.get(n.path);
        return h("li", {}, h("a", {
          href: "#", class: `file ${c ? "changed" : ""} ${n.path === focus ? "active" : ""}`,
          "data-testid": "file-tree-file", "data-path": n.path, title: n.path,
          onclick: (e) => { e.preventDefault(); show(n.path); },
        }, n.name), c ? [" ", h("span", { class: "add" }, `+${c.addedLines || 0}`), " ", h("span", { class: "del" }, `−${c.removedLines || 0}`)] : null);
      }
      const hasChange = [...changed.keys()].some((p) => p.startsWith(`${n.path}/`));
      const open = openDirs.has(n.path) || hasChange;
      const list = h("ul", {});
      const details = h("details", {
        open, ontoggle: () => {
          if (details.open) { openDirs.add(n.path); if (!list.childElementCount) mount(list, fileItems(n, changed)); }
          else openDirs.delete(n.path);
        },
      }, h("summary", { class: `dir ${hasChange ? "changed" : ""}` }, `${n.name}/`), list);
      if (open) mount(list, fileItems(n, changed));
      return h("li", {}, details);
    });
  }

  function drawFiles(changes) {
    const entries = (git?.fileTree || []).filter((f) => f.type === "FILE_TREE_ENTRY_TYPE_FILE");
    mount(files, entries.length
      ? fileItems(treeOf(entries), new Map(changes.map((c) => [c.path, c])))
      : h("li", { class: "muted" }, git ? "No files." : "Files show here once the sandbox has the repository."));
  }

  function draw() {
    if (!git) {
      mount(status, "Changes show here once the sandbox has the repository.");
      mount(tree);
      mount(viewer);
      drawFiles([]);
      return;
    }
    const changes = git.fileChanges || [];
    const diffs = new Map((git.diffs || []).map((d) => [d.path, d]));
    const known = (path) => changes.some((c) => c.path === path) || (git.fileTree || []).some((f) => f.path === path);
    if (focus && !known(focus)) focus = null;
    drawFiles(changes);
    const base = git.baseBranch ? `${git.baseBranch}` : "HEAD";
    mount(status,
      changes.length
        ? `${changes.length} file${changes.length === 1 ? "" : "s"} changed against ${base} (committed and uncommitted)`
        : null,
      error ? h("p", { class: "error" }, error) : null);
    const unchanged = focus && !changes.some((c) => c.path === focus);
    if (!unchanged) content = null;
    if (!changes.length) {
      mount(tree);
      mount(viewer, unchanged ? contentBlock(focus, base) : h("p", { class: "muted", "data-testid": "no-changes" },
        `No changes against ${base}. The agent's commits and uncommitted work on ${git.branch || "the branch"} show here.`));
      return;
    }
    mount(tree,
      h("li", {}, h("a", { href: "#", class: focus ? "" : "active", "data-testid": "tree-all", onclick: (e) => { e.preventDefault(); focus = null; draw(); } }, "All changes")),
      treeItems(treeOf(changes)));
    const shown = focus ? changes.filter((c) => c.path === focus) : changes;
    mount(viewer, unchanged ? contentBlock(focus, base) : shown.map((c) => fileBlock(c, diffs.get(c.path))));
  }

  return {
    element,
    files,
    render(gitState, fileReverts, ended, sandboxName) {
      const key = JSON.stringify([gitState?.computeTime, gitState?.headCommit, fileReverts, ended, sandboxName]);
      if (key === drawn) return;
      drawn = key;
      sandbox = sandboxName || null;
      git = gitState || null;
      reverts = fileReverts || [];
      readOnly = ended;
      draw();
    },
  };
}
