"""Domain objects ↔ `foundry.sandbox.v1` messages (used by the servicer, the event writer and watch)."""

from __future__ import annotations

from typing import Any

from foundry.sandbox.v1 import (
    agent_pb2,
    agent_session_pb2,
    git_state_pb2,
    process_pb2,
    sandbox_pb2,
    session_event_pb2,
)
from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict, ParseDict

from services.platform.timestamps import to_timestamp
from services.sandbox.domain import models as m
from services.sandbox.domain.permissions import PermissionOutcome, PermissionRequest

ts = to_timestamp


def _enum(enum_type: Any, prefix: str, value: str) -> Any:
    return int(enum_type.Value(f"{prefix}_{value.upper()}")) if value else 0


def sandbox(s: m.Sandbox) -> sandbox_pb2.Sandbox:
    out = sandbox_pb2.Sandbox(
        name=s.key.name,
        task=s.task,
        repository=s.repository,
        provider=s.provider,
        provider_sandbox_id=s.provider_sandbox_id,
        state=_enum(sandbox_pb2.SandboxState, "SANDBOX_STATE", s.state),
        error_message=s.error_message,
        create_time=ts(s.create_time),
        update_time=ts(s.update_time),
        destroy_time=ts(s.destroy_time),
        replica=s.replica,
        from_warm_pool=s.from_warm_pool,
    )
    if s.checkout is not None:
        c = s.checkout
        out.checkout.CopyFrom(
            sandbox_pb2.RepositoryCheckout(
                clone_url=c.clone_url,
                branch=c.branch,
                base_branch=c.base_branch,
                branch_existed=c.branch_existed,
                path=c.path,
                head_commit=c.head_commit,
                prepare_time=ts(c.prepare_time),
            )
        )
    return out


def agent_session(s: m.AgentSession) -> agent_session_pb2.AgentSession:
    return agent_session_pb2.AgentSession(
        name=s.key.name,
        agent=f"agents/{s.agent}",
        model=s.model,
        mode=s.mode,
        permission_policy=_enum(agent_session_pb2.PermissionPolicy, "PERMISSION_POLICY", s.permission_policy),
        acp_session_id=s.acp_session_id,
        state=_enum(agent_session_pb2.AgentSessionState, "AGENT_SESSION_STATE", s.state),
        current_turn=s.key.turn_name(s.current_turn) if s.current_turn else "",
        last_event_seq=s.last_event_seq,
        error_message=s.error_message,
        create_time=ts(s.create_time),
        update_time=ts(s.update_time),
        close_time=ts(s.close_time),
    )


def agent_connection(c: m.AgentConnection) -> agent_session_pb2.AgentConnection:
    return agent_session_pb2.AgentConnection(
        name=f"{c.sandbox.name}/agents/{c.agent}",
        agent=f"agents/{c.agent}",
        state=_enum(agent_session_pb2.AgentConnectionState, "AGENT_CONNECTION_STATE", c.state),
        pid=c.pid,
        protocol_version=c.protocol_version,
        error_message=c.error_message,
        start_time=ts(c.start_time),
    )


def turn(t: m.Turn) -> agent_session_pb2.Turn:
    return agent_session_pb2.Turn(
        name=t.name,
        state=_enum(agent_session_pb2.TurnState, "TURN_STATE", t.state),
        stop_reason=_enum(agent_session_pb2.StopReason, "STOP_REASON", t.stop_reason),
        error_message=t.error_message,
        first_event_seq=t.first_event_seq,
        last_event_seq=t.last_event_seq,
        create_time=ts(t.create_time),
        start_time=ts(t.start_time),
        end_time=ts(t.end_time),
    )


def session_event(e: m.SessionEvent) -> session_event_pb2.SessionEvent:
    payload = struct_pb2.Struct()
    ParseDict(e.payload, payload)
    return session_event_pb2.SessionEvent(
        name=e.name,
        seq=e.seq,
        create_time=ts(e.create_time),
        kind=_enum(session_event_pb2.SessionEventKind, "SESSION_EVENT_KIND", e.kind),
        sender=_enum(session_event_pb2.SessionEventSender, "SESSION_EVENT_SENDER", e.sender),
        turn=e.session.turn_name(e.turn) if e.turn else "",
        text=e.text,
        payload=payload,
    )


def payload_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    return MessageToDict(struct)


_CHANGE = {
    m.ChangeType.MODIFIED: git_state_pb2.FILE_CHANGE_TYPE_MODIFIED,
    m.ChangeType.ADDED: git_state_pb2.FILE_CHANGE_TYPE_ADDED,
    m.ChangeType.DELETED: git_state_pb2.FILE_CHANGE_TYPE_DELETED,
}


def git_state(g: m.GitState) -> git_state_pb2.GitState:
    tree = [
        git_state_pb2.FileTreeEntry(path=d, type=git_state_pb2.FILE_TREE_ENTRY_TYPE_DIRECTORY)
        for d in g.directories
    ]
    tree += [
        git_state_pb2.FileTreeEntry(path=f, type=git_state_pb2.FILE_TREE_ENTRY_TYPE_FILE) for f in g.files
    ]
    tree.sort(key=lambda entry: entry.path)
    return git_state_pb2.GitState(
        name=f"{g.sandbox.name}/gitState",
        branch=g.branch,
        head_commit=g.head_commit,
        base_branch=g.base_branch,
        base_commit=g.base_commit,
        file_changes=[
            git_state_pb2.FileChange(
                path=c.path,
                type=_CHANGE[c.type],
                added_lines=c.added_lines,
                removed_lines=c.removed_lines,
                binary=c.binary,
            )
            for c in g.file_changes
        ],
        diffs=[
            git_state_pb2.FileDiff(path=d.path, unified_diff=d.unified_diff, truncated=d.truncated)
            for d in g.diffs
        ],
        file_tree=tree,
        compute_time=ts(g.compute_time),
    )


def process(p: m.Process) -> process_pb2.Process:
    out = process_pb2.Process(
        name=p.name,
        command=p.spec.command,
        args=p.spec.args,
        cwd=p.spec.cwd,
        env=p.spec.env,
        tty=p.spec.tty,
        interactive=p.spec.interactive,
        pid=p.pid,
        state=_enum(process_pb2.ProcessState, "PROCESS_STATE", p.state),
        exit_signal=p.exit_signal,
        output_size_bytes=p.output_size_bytes,
        create_time=ts(p.create_time),
        exit_time=ts(p.exit_time),
    )
    if p.exit_code is not None:
        out.exit_code = p.exit_code
    return out


def process_spec(p: process_pb2.Process) -> m.ProcessSpec:
    return m.ProcessSpec(
        command=p.command, args=list(p.args), cwd=p.cwd, env=dict(p.env), tty=p.tty, interactive=p.interactive
    )


_DISPLAY_NAMES = {"fake": "Fake agent (offline)", "claude": "Claude Code", "codex": "Codex"}


def agent(a: m.AgentInfo) -> agent_pb2.Agent:
    return agent_pb2.Agent(
        name=f"agents/{a.name}",
        display_name=_DISPLAY_NAMES.get(a.name, a.name.capitalize()),
        command=a.command,
        available=a.available,
        models=[agent_pb2.AgentModel(id=model, label=model.capitalize()) for model in a.models],
        default_model=a.models[0] if a.models else "",
        default=a.default,
        installed=a.installed,
        credential_variables=a.credentials,
        credentials_present=a.credentials_present,
        unavailable_reason=a.unavailable_reason,
    )


def permission_policy(value: int) -> m.PermissionPolicy | None:
    if value == agent_session_pb2.PERMISSION_POLICY_ALLOW:
        return m.PermissionPolicy.ALLOW
    if value == agent_session_pb2.PERMISSION_POLICY_REJECT:
        return m.PermissionPolicy.REJECT
    if value == agent_session_pb2.PERMISSION_POLICY_ASK:
        return m.PermissionPolicy.ASK
    return None


_OUTCOMES: dict[int, PermissionOutcome] = {
    agent_session_pb2.PERMISSION_OUTCOME_ALLOW_ONCE: PermissionOutcome.ALLOW_ONCE,
    agent_session_pb2.PERMISSION_OUTCOME_ALLOW_ALWAYS: PermissionOutcome.ALLOW_ALWAYS,
    agent_session_pb2.PERMISSION_OUTCOME_REJECT: PermissionOutcome.REJECT,
    agent_session_pb2.PERMISSION_OUTCOME_CANCELLED: PermissionOutcome.CANCELLED,
}


def permission_outcome(value: int) -> PermissionOutcome | None:
    """A PermissionOutcome enum value → the domain outcome (None for unspecified or unknown)."""
    return _OUTCOMES.get(int(value))


def permission_request(r: PermissionRequest) -> agent_session_pb2.PermissionRequest:
    return agent_session_pb2.PermissionRequest(
        name=r.name,
        turn=r.session.turn_name(r.turn_id) if r.turn_id else "",
        title=r.title,
        state=_enum(agent_session_pb2.PermissionRequestState, "PERMISSION_REQUEST_STATE", r.state),
        outcome=_enum(agent_session_pb2.PermissionOutcome, "PERMISSION_OUTCOME", r.outcome or ""),
        option_id=r.option_id,
        answered_by=r.answered_by,
        delivered=r.delivered,
        create_time=ts(r.create_time),
        answer_time=ts(r.answer_time),
    )


def attachments(items: Any) -> list[m.Attachment]:
    return [m.Attachment(a.id, a.file_path, a.line_number, a.line_content) for a in items]


def process_stream(value: int) -> str:
    """A ProcessOutputStream → `stdout` / `stderr`, or "" for both."""
    if value == process_pb2.PROCESS_OUTPUT_STREAM_STDOUT:
        return "stdout"
    if value == process_pb2.PROCESS_OUTPUT_STREAM_STDERR:
        return "stderr"
    return ""
