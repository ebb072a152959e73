"""foundryctl's human output: readable statuses, what changed on a watched resource, and a session's
transcript as a conversation. Everything here works on the proto3 JSON mapping of the messages (the
same dicts `-o json` prints), so it needs no generated code and stays independent of field presence.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

_TASK_STATUS = {
    "TASK_STATUS_INIT_ENQUEUE_PROVISION": "queued",
    "TASK_STATUS_INIT_CREATE_SANDBOX": "creating sandbox",
    "TASK_STATUS_INIT_PREPARE_REPOSITORY": "preparing repository",
    "TASK_STATUS_INIT_ENSURE_AGENT": "starting agent",
    "TASK_STATUS_INIT_CREATE_SESSION": "creating session",
    "TASK_STATUS_INIT_COMPLETE": "ready",
    "TASK_STATUS_ARCHIVE_STOP_SESSIONS": "archiving",
    "TASK_STATUS_ARCHIVE_RELEASE_SANDBOX": "archiving",
    "TASK_STATUS_ARCHIVE_FINALIZE": "archiving",
    "TASK_STATUS_KILL_DESTROY_SANDBOX": "killing",
    "TASK_STATUS_KILL_FINALIZE": "killing",
}


def readable(value: Any, prefix: str) -> str:
    """`TASK_STATUS_IDLE` → `idle`; `PROVISIONING_STAGE_SANDBOX_ALLOCATED` → `sandbox allocated`."""
    text = str(value or "")
    return text.removeprefix(prefix).lower().replace("_", " ") if text else ""


def task_status(value: Any) -> str:
    """A task status in words: `idle`, `running`, `archiving`, `archived`, `creating sandbox`, …"""
    return _TASK_STATUS.get(str(value), "") or readable(value, "TASK_STATUS_") or "unknown"


def _type(resource: dict[str, Any]) -> str:
    return str(resource.get("@type", "")).rsplit(".", 1)[-1]


def _last(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _sessions(sessions: list[dict[str, Any]]) -> dict[str, str]:
    facts: dict[str, str] = {}
    for s in sessions:
        label = s.get("displayName") or _last(str(s.get("name", "")))
        status = readable(s.get("status"), "SESSION_STATUS_")
        facts[f"session {label!r}"] = status + (f" ({s['errorMessage']})" if s.get("errorMessage") else "")
    return facts


def facts(resource: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """What a person wants to see of a watched resource: (what it is, {field: value in words}).

    Unknown types give ("", {}): the caller prints only their name."""
    kind = _type(resource)
    if kind in ("Task", "TaskSummary"):
        stage = resource.get("provisioning", {}).get("stage") or resource.get("provisioningStage")
        out = {
            "title": json.dumps(resource.get("title", "")),
            "status": task_status(resource.get("status")),
            "stage": readable(stage, "PROVISIONING_STAGE_"),
            "branch": str(resource.get("branch", "")),
            "message": str(resource.get("statusMessage", "")),
            "error": str(resource.get("provisioning", {}).get("errorMessage", "")),
            **_sessions(resource.get("sessions", [])),
        }
        if kind == "Task":
            changes = resource.get("gitState", {}).get("fileChanges", [])
            out["changed files"] = str(len(changes)) if changes else ""
            out["publication"] = readable(resource.get("publication", {}).get("state"), "PUBLICATION_STATE_")
        pr = resource.get("pullRequest", {})
        out["pull request"] = f"#{pr['number']} {pr.get('url', '')}".strip() if pr.get("number") else ""
        return "task", {k: v for k, v in out.items() if v}
    if kind == "RepositorySummary":
        return "repository", {
            "full name": str(resource.get("fullName", "")),
            "tasks": str(resource.get("taskCount", 0)),
        }
    if kind == "PullRequestSummary":
        return "pull request", {
            "number": f"#{resource.get('number', '')}",
            "title": json.dumps(resource.get("title", "")),
            "state": readable(resource.get("state"), "PULL_REQUEST_STATE_"),
        }
    if kind == "SyncStatus":
        total = resource.get("totalRepositoryCount", 0)
        progress = f"{resource.get('processedRepositoryCount', 0)}/{total}" if total else ""
        out = {
            "state": readable(resource.get("state"), "SYNC_STATE_"),
            "progress": progress,
            "error": str(resource.get("errorMessage", "")),
        }
        return "sync", {k: v for k, v in out.items() if v}
    return "", {}


class ChangePrinter:
    """Turns Watch events (as JSON dicts) into lines saying what changed.

    The snapshot prints each resource once (`task organizations/acme/tasks/t1: title "Hello", status
    idle, …`); an upsert prints only the fields that changed (`… status: running → idle`); a delete
    says so. Resources this printer does not know, and upserts that changed nothing shown, print
    nothing; bookmarks and the end of a snapshot print nothing either.
    """

    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write
        self.known: dict[str, dict[str, str]] = {}

    def event(self, event: dict[str, Any]) -> None:
        kind = str(event.get("kind", "")).removeprefix("WATCH_EVENT_KIND_")
        if kind == "RESET":
            self.write("(the stream was reset; showing the current state again)")
            return
        for item in event.get("items", []):
            name = str(item.get("name", ""))
            if kind == "DELETE":
                if self.known.pop(name, None) is not None:
                    self.write(f"{name}: gone")
                continue
            if kind not in ("SNAPSHOT", "UPSERT"):
                continue
            what, now = facts(item.get("resource", {}))
            if not what:
                continue
            before = self.known.get(name)
            self.known[name] = now
            if before is None or kind == "SNAPSHOT":
                shown = ", ".join(f"{k} {v}" for k, v in now.items())
                self.write(f"{what} {name}: {shown}" if shown else f"{what} {name}")
                continue
            changed = [
                f"{k}: {before.get(k) or '(none)'} → {now.get(k) or '(none)'}"
                for k in {**before, **now}
                if before.get(k) != now.get(k)
            ]
            if changed:
                self.write(f"{name}: " + "; ".join(changed))


class TranscriptPrinter:
    """Writes a session's events (SessionEvent JSON dicts, in log order) as a conversation.

        you: $ ls
        tool: run ls
        agent: README.md
        tool: run ls → completed (exit code 0)
        ── turn ended (end_turn)

    Consecutive chunks of the agent's answer (or of its thinking) form one message, also when they
    arrive one by one while following. Tool calls show their title (and command), then their end
    with its exit code; progress updates, usage and similar bookkeeping are left out. Events already
    printed (by sequence number) are skipped, so a replayed snapshot prints nothing twice.
    """

    def __init__(self, write: Callable[[str], None]) -> None:
        self._write = write  # writes text as is (no newline added)
        self._open = ""  # the label of the message still being written, "" when there is none
        self._midline = False  # the last text written did not end with a newline
        self._last_seq = 0
        self._tools: dict[str, str] = {}

    def _line(self, text: str) -> None:
        self.close()
        self._write(text + "\n")

    def close(self) -> None:
        """End the message being written (call at the end of the output)."""
        if self._midline:
            self._write("\n")
        self._open, self._midline = "", False

    def _chunk(self, label: str, text: str) -> None:
        if self._open != label:
            self.close()
            self._write(f"{label}: ")
            self._open, self._midline = label, True
            text = text.lstrip("\n")
        if text:
            self._write(text)
            self._midline = not text.endswith("\n")

    def event(self, event: dict[str, Any]) -> None:
        seq = int(event.get("seq", 0))
        if seq and seq <= self._last_seq:
            return
        self._last_seq = max(self._last_seq, seq)
        kind = str(event.get("kind", "")).removeprefix("SESSION_EVENT_KIND_")
        text = str(event.get("text", ""))
        payload: dict[str, Any] = event.get("payload", {}) or {}
        if kind == "USER_MESSAGE":
            self._line(f"you: {text}")
        elif kind == "AGENT_MESSAGE_CHUNK":
            self._chunk("agent", text)
        elif kind == "AGENT_THOUGHT_CHUNK":
            self._chunk("thinking", text)
        elif kind == "PLAN":
            entries = [
                f"[{readable(e.get('status'), '')}] {e.get('content', '')}"
                for e in payload.get("entries", [])
                if isinstance(e, dict)
            ]
            self._line("plan: " + "; ".join(entries))
        elif kind == "TOOL_CALL":
            self._tool_call(payload)
        elif kind == "TOOL_CALL_UPDATE":
            self._tool_update(payload)
        elif kind == "PERMISSION_REQUEST":
            call = payload.get("toolCall", {}) or {}
            asked = f"permission asked: {call.get('title') or call.get('toolCallId', '?')}"
            if payload.get("requestId"):  # waits for an answer: `foundryctl answer … <id> allow-once`
                asked += f" (request {payload['requestId']})"
            self._line(asked)
        elif kind == "PERMISSION_RESPONSE":
            late = " (its agent had stopped)" if payload.get("delivered") is False else ""
            self._line(f"permission answered: {text}{late}")
        elif kind == "ERROR":
            self._line(f"error: {text or payload.get('message', '')}")
        elif kind == "NOTICE":
            self._line(f"notice: {text}")
        elif kind == "MESSAGE_QUEUED":
            self._line(f"you (queued): {text}")
        elif kind == "TURN_COMPLETED":
            why = payload.get("stopReason") or payload.get("state") or "done"
            self._line(f"── turn ended ({why})")

    def _tool_call(self, payload: dict[str, Any]) -> None:
        title = str(payload.get("title") or payload.get("kind") or "tool call")
        self._tools[str(payload.get("toolCallId", ""))] = title
        raw = payload.get("rawInput")
        command = raw.get("command") if isinstance(raw, dict) else None
        self._line(f"tool: {title}" + (f"  $ {command}" if command else ""))

    def _tool_update(self, payload: dict[str, Any]) -> None:
        status = str(payload.get("status", ""))
        if status not in ("completed", "failed"):
            return  # progress: the output also arrives as the agent's message
        title = payload.get("title") or self._tools.get(str(payload.get("toolCallId", "")), "tool call")
        output = payload.get("rawOutput")
        raw: dict[str, Any] = output if isinstance(output, dict) else {}
        detail = []
        if isinstance(raw.get("exitCode"), int | float):  # a Struct number: 3.0
            detail.append(f"exit code {int(raw['exitCode'])}")
        if raw.get("cancelled"):
            detail.append("cancelled")
        for content in payload.get("content") or []:
            if isinstance(content, dict) and content.get("type") == "diff":
                detail.append(f"diff of {content.get('path', '?')}")
        self._line(f"tool: {title} → {status}" + (f" ({', '.join(detail)})" if detail else ""))
