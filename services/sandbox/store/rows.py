"""Row ↔ domain conversions for the sandbox service's tables."""

from __future__ import annotations

import datetime as dt
from typing import Any

from services.sandbox.domain import models as m


def checkout_json(c: m.Checkout | None) -> dict[str, Any] | None:
    if c is None:
        return None
    return {
        "clone_url": c.clone_url,
        "branch": c.branch,
        "base_branch": c.base_branch,
        "branch_existed": c.branch_existed,
        "path": c.path,
        "head_commit": c.head_commit,
        "prepare_time": c.prepare_time.isoformat(),
    }


def _checkout(data: dict[str, Any] | None) -> m.Checkout | None:
    if not data:
        return None
    return m.Checkout(
        data["clone_url"],
        data["branch"],
        data["base_branch"],
        bool(data["branch_existed"]),
        data["path"],
        data["head_commit"],
        dt.datetime.fromisoformat(data["prepare_time"]),
    )


def sandbox(r: Any) -> m.Sandbox:
    return m.Sandbox(
        key=m.SandboxKey(r.organization, r.sandbox_id),
        task=r.task,
        repository=r.repository,
        provider=r.provider,
        provider_sandbox_id=r.provider_sandbox_id,
        state=m.SandboxState(r.state),
        checkout=_checkout(r.checkout),
        error_message=r.error_message,
        create_time=r.create_time,
        update_time=r.update_time,
        destroy_time=r.destroy_time,
        version=int(r.version),
        replica=r.replica,
        pool=r.pool,
        egress=r.egress_policy,
    )


def sandbox_values(s: m.Sandbox) -> dict[str, Any]:
    return {
        "organization": s.key.organization,
        "sandbox_id": s.key.sandbox_id,
        "task": s.task,
        "repository": s.repository,
        "provider": s.provider,
        "provider_sandbox_id": s.provider_sandbox_id,
        "state": s.state.value,
        "checkout": checkout_json(s.checkout),
        "error_message": s.error_message,
        "create_time": s.create_time,
        "update_time": s.update_time,
        "destroy_time": s.destroy_time,
        "version": s.version,
        "replica": s.replica,
        "pool": s.pool,
        "egress_policy": s.egress,
    }


def session(r: Any) -> m.AgentSession:
    return m.AgentSession(
        key=m.SessionKey(m.SandboxKey(r.organization, r.sandbox_id), r.session_id),
        agent=r.agent,
        model=r.model,
        mode=r.mode,
        permission_policy=m.PermissionPolicy(r.permission_policy),
        acp_session_id=r.acp_session_id,
        state=m.SessionState(r.state),
        current_turn=r.current_turn,
        last_event_seq=int(r.last_event_seq),
        error_message=r.error_message,
        create_time=r.create_time,
        update_time=r.update_time,
        close_time=r.close_time,
        version=int(r.version),
    )


def session_values(s: m.AgentSession) -> dict[str, Any]:
    k = s.key
    return {
        "organization": k.sandbox.organization,
        "sandbox_id": k.sandbox.sandbox_id,
        "session_id": k.session_id,
        "agent": s.agent,
        "model": s.model,
        "mode": s.mode,
        "permission_policy": s.permission_policy.value,
        "acp_session_id": s.acp_session_id,
        "state": s.state.value,
        "current_turn": s.current_turn,
        "last_event_seq": s.last_event_seq,
        "error_message": s.error_message,
        "create_time": s.create_time,
        "update_time": s.update_time,
        "close_time": s.close_time,
        "version": s.version,
    }


def turn(r: Any) -> m.Turn:
    return m.Turn(
        session=m.SessionKey(m.SandboxKey(r.organization, r.sandbox_id), r.session_id),
        turn_id=r.turn_id,
        state=m.TurnState(r.state),
        text=r.text,
        attachments=[
            m.Attachment(a["id"], a["file_path"], int(a["line_number"]), a["line_content"])
            for a in r.attachments
        ],
        user=r.user,
        stop_reason=r.stop_reason,
        error_message=r.error_message,
        first_event_seq=int(r.first_event_seq),
        last_event_seq=int(r.last_event_seq),
        cancel_requested=bool(r.cancel_requested),
        runner=r.runner,
        agent_pid=int(r.agent_pid),
        create_time=r.create_time,
        start_time=r.start_time,
        end_time=r.end_time,
        heartbeat_time=r.heartbeat_time,
    )


def event(r: Any) -> m.SessionEvent:
    return m.SessionEvent(
        session=m.SessionKey(m.SandboxKey(r.organization, r.sandbox_id), r.session_id),
        seq=int(r.seq),
        create_time=r.create_time,
        kind=m.EventKind(r.kind),
        sender=m.EventSender(r.sender),
        turn=r.turn_id,
        text=r.text,
        payload=dict(r.payload or {}),
    )


def git_state_json(g: m.GitState) -> dict[str, Any]:
    return {
        "branch": g.branch,
        "head_commit": g.head_commit,
        "base_branch": g.base_branch,
        "base_commit": g.base_commit,
        "file_changes": [
            [c.path, c.type.value, c.added_lines, c.removed_lines, c.binary] for c in g.file_changes
        ],
        "diffs": [[d.path, d.unified_diff, d.truncated] for d in g.diffs],
        "files": g.files,
        "directories": g.directories,
    }


def git_state(r: Any) -> m.GitState:
    s = r.state
    return m.GitState(
        sandbox=m.SandboxKey(r.organization, r.sandbox_id),
        branch=s["branch"],
        head_commit=s["head_commit"],
        file_changes=[m.FileChange(p, m.ChangeType(t), a, d, b) for p, t, a, d, b in s["file_changes"]],
        diffs=[m.FileDiff(p, u, t) for p, u, t in s["diffs"]],
        files=list(s["files"]),
        directories=list(s["directories"]),
        compute_time=r.compute_time,
        version=int(r.version),
        base_branch=s.get("base_branch", ""),
        base_commit=s.get("base_commit", ""),
    )


def process(r: Any) -> m.Process:
    return m.Process(
        sandbox=m.SandboxKey(r.organization, r.sandbox_id),
        process_id=r.process_id,
        spec=m.ProcessSpec(r.command, list(r.args), r.cwd, dict(r.env), bool(r.tty), bool(r.interactive)),
        request_id=r.request_id or "",
        pid=int(r.pid),
        state=m.ProcessState(r.state),
        exit_code=None if r.exit_code is None else int(r.exit_code),
        exit_signal=int(r.exit_signal),
        output_size_bytes=int(r.output_size_bytes),
        create_time=r.create_time,
        exit_time=r.exit_time,
    )


def process_values(p: m.Process) -> dict[str, Any]:
    return {
        "organization": p.sandbox.organization,
        "sandbox_id": p.sandbox.sandbox_id,
        "process_id": p.process_id,
        "request_id": p.request_id or None,
        "command": p.spec.command,
        "args": p.spec.args,
        "cwd": p.spec.cwd,
        "env": p.spec.env,
        "tty": p.spec.tty,
        "interactive": p.spec.interactive,
        "pid": p.pid,
        "state": p.state.value,
        "exit_code": p.exit_code,
        "exit_signal": p.exit_signal,
        "output_size_bytes": p.output_size_bytes,
        "create_time": p.create_time,
        "exit_time": p.exit_time,
    }
