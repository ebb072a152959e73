"""Task-service records ↔ protobuf messages."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from foundry.github_data.v1 import pull_request_pb2
from foundry.sandbox.v1 import agent_session_pb2, git_state_pb2, sandbox_pb2
from foundry.task.v1 import session_pb2, task_pb2, user_task_state_pb2

from services.platform.timestamps import to_timestamp
from services.task.domain.models import Owner, Session, Task, UserSessionState, UserTaskState

ts = to_timestamp


def task_status(value: str) -> task_pb2.TaskStatus.ValueType:
    return task_pb2.TaskStatus.Value(f"TASK_STATUS_{value.upper()}")


def stage_value(value: str) -> task_pb2.ProvisioningStage.ValueType:
    if not value:
        return task_pb2.PROVISIONING_STAGE_UNSPECIFIED
    return task_pb2.ProvisioningStage.Value(f"PROVISIONING_STAGE_{value.upper()}")


def session_status(value: str) -> session_pb2.SessionStatus.ValueType:
    return session_pb2.SessionStatus.Value(f"SESSION_STATUS_{value.upper()}")


def _agent(value: str) -> str:
    return f"agents/{value}" if value else ""


def owner(value: Owner | None) -> task_pb2.TaskOwner | None:
    if value is None:
        return None
    return task_pb2.TaskOwner(
        user=value.user,
        login=value.login,
        email=value.email,
        avatar_url=value.avatar_url,
        update_time=ts(value.updated_at),
    )


def session_summary(row: Session, *, unread: bool = False) -> session_pb2.SessionSummary:
    return session_pb2.SessionSummary(
        name=row.name,
        display_name=row.display_name,
        agent=_agent(row.agent),
        model=row.model,
        status=session_status("closed" if row.closed else row.status),
        thinking_since=ts(row.thinking_since) if row.status == "running" else None,
        unread=unread,
        error_message=row.error_message,
        used=row.used,
        notice=row.notice,
    )


def session(row: Session, *, unread: bool = False) -> session_pb2.Session:
    """The Session resource; `unread` is the caller's flag (False in shared copies)."""
    running = row.status == "running" and not row.closed
    return session_pb2.Session(
        name=row.name,
        display_name=row.display_name,
        agent=_agent(row.agent),
        model=row.model,
        status=session_status("closed" if row.closed else row.status),
        thinking_since=ts(row.thinking_since) if running else None,
        error_message=row.error_message,
        used=row.used,
        unread=unread,
        sandbox_session=row.sandbox_session,
        current_turn=row.current_turn if running else "",
        create_time=ts(row.created_at),
        update_time=ts(row.updated_at),
        close_time=ts(row.closed_at),
        stop_time=ts(row.stop_requested_at) if running else None,
        agent_model=row.agent_model,
        notice=row.notice,
    )


def _pull_request(task: Task) -> pull_request_pb2.PullRequestSummary | None:
    if not task.pull_request:
        return None
    return pull_request_pb2.PullRequestSummary.FromString(task.pull_request)


def task(
    row: Task,
    sessions: Sequence[Session],
    *,
    status: str,
    full: bool = True,
    unread: frozenset[str] = frozenset(),
) -> task_pb2.Task:
    """The Task resource with its open sessions. `status` is the computed status; `unread` holds
    the session ids unread for the caller (empty for shared copies); BASIC leaves out diffs and
    the file tree."""
    out = task_pb2.Task(
        name=row.name,
        repository=row.repository,
        repository_full_name=row.repository_full_name,
        title=row.title,
        prompt=row.prompt,
        branch=row.branch,
        status=task_status(status),
        status_message=row.status_message,
        provisioning=task_pb2.ProvisioningProgress(
            stage=stage_value(row.stage),
            error_message=row.stage_error,
            failed_stage=stage_value(row.failed_stage),
            update_time=ts(row.stage_updated_at),
        ),
        owner=owner(row.owner),
        pull_request=_pull_request(row),
        sessions=[session_summary(s, unread=s.id in unread) for s in sessions if not s.closed],
        create_time=ts(row.created_at),
        update_time=ts(row.updated_at),
        end_time=ts(row.ended_at),
    )
    if row.publish_state:
        out.publication.CopyFrom(
            task_pb2.PullRequestPublication(
                state=task_pb2.PublicationState.Value(f"PUBLICATION_STATE_{row.publish_state.upper()}"),
                error_message=row.publish_error,
                request_id=row.publish_request_id or "",
                title=row.publish_title or row.title,
                draft=row.publish_draft,
                head_commit=row.publish_head_commit,
                request_time=ts(row.publish_requested_at),
                update_time=ts(row.publish_updated_at),
                push_only=row.publish_push_only,
            )
        )
    for revert in row.file_reverts:
        out.file_reverts.append(
            task_pb2.FileRevert(
                path=revert["path"],
                state=task_pb2.FileRevertState.Value(f"FILE_REVERT_STATE_{revert['state'].upper()}"),
                error_message=revert.get("error", ""),
                request_id=revert["request_id"],
                request_time=ts(dt.datetime.fromisoformat(revert["requested_at"])),
                update_time=ts(dt.datetime.fromisoformat(revert["updated_at"])),
            )
        )
    if row.sandbox_state:
        out.sandbox.CopyFrom(
            task_pb2.SandboxSummary(
                name=row.sandbox_name,
                provider=row.sandbox_provider,
                state=sandbox_pb2.SandboxState.ValueType(row.sandbox_state),
                cwd=row.sandbox_cwd,
                error_message=row.sandbox_error,
            )
        )
    if row.git_state:
        git = git_state_pb2.GitState.FromString(row.git_state)
        if not full:
            del git.diffs[:]
            del git.file_tree[:]
        out.git_state.CopyFrom(git)
    return out


def task_summary(row: Task, sessions: Sequence[Session], *, status: str) -> task_pb2.TaskSummary:
    """The shared summary the organization projection stores."""
    return task_pb2.TaskSummary(
        name=row.name,
        repository=row.repository,
        repository_full_name=row.repository_full_name,
        title=row.title,
        status=task_status(status),
        status_message=row.status_message,
        provisioning_stage=stage_value(row.stage),
        branch=row.branch,
        pull_request=_pull_request(row),
        sessions=[session_summary(s) for s in sessions if not s.closed],
        owner=owner(row.owner),
        virtual=False,
        update_time=ts(row.updated_at),
    )


def attachments_to_pb(items: Sequence[dict[str, Any]]) -> list[agent_session_pb2.PromptAttachment]:
    return [
        agent_session_pb2.PromptAttachment(
            id=str(a.get("id", "")),
            file_path=str(a.get("file_path", "")),
            line_number=int(a.get("line_number", 0)),
            line_content=str(a.get("line_content", "")),
        )
        for a in items
    ]


def attachments_from_pb(items: Sequence[agent_session_pb2.PromptAttachment]) -> list[dict[str, Any]]:
    return [
        {"id": a.id, "file_path": a.file_path, "line_number": a.line_number, "line_content": a.line_content}
        for a in items
    ]


def user_session_state(task_row: Task, state: UserSessionState) -> user_task_state_pb2.UserSessionState:
    return user_task_state_pb2.UserSessionState(
        name=f"{task_row.name}/sessions/{state.session_id}/userStates/{state.user}",
        unread=state.unread,
        draft=user_task_state_pb2.Draft(
            text=state.draft_text,
            attachments=attachments_to_pb(state.draft_attachments),
            update_time=ts(state.draft_updated_at),
        ),
        update_time=ts(state.updated_at),
    )


def user_task_state(
    task_row: Task, state: UserTaskState, open_session_ids: Sequence[str] | None = None
) -> user_task_state_pb2.UserTaskState:
    """The user's state; per-session states only for open sessions when `open_session_ids` is given."""
    keep = set(open_session_ids) if open_session_ids is not None else None
    return user_task_state_pb2.UserTaskState(
        name=user_task_state_name(task_row, state.user),
        active_session=f"{task_row.name}/sessions/{state.active_session}" if state.active_session else "",
        sessions=[
            user_session_state(task_row, s) for s in state.sessions if keep is None or s.session_id in keep
        ],
        update_time=ts(state.updated_at),
    )


def user_task_state_name(task_row: Task, user_id: str) -> str:
    return f"{task_row.name}/userStates/{user_id}"


def sandbox_state_of(sandbox: sandbox_pb2.Sandbox) -> tuple[int, str, str, str]:
    """(state, provider, cwd, error) of a sandbox as the task keeps them."""
    return sandbox.state, sandbox.provider, sandbox.checkout.path, sandbox.error_message
