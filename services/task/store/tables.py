"""Tables owned by the task service (only it writes them)."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from services.platform.db import UtcDateTime, new_metadata

metadata = new_metadata()

# One row per task; also the provisioning workflow's state machine (stage + lease).
tasks = Table(
    "tasks",
    metadata,
    Column("id", String(100), primary_key=True),
    Column("organization", String(100), nullable=False),
    Column("repository", String(300), nullable=False),
    Column("repository_full_name", String(300), nullable=False, default=""),
    Column("clone_url", Text, nullable=False, default=""),
    Column("default_branch", String(200), nullable=False, default=""),
    Column("title", Text, nullable=False),
    Column("prompt", Text, nullable=False),
    Column("branch", String(200), nullable=False),
    Column("status", String(40), nullable=False),
    Column("status_message", Text, nullable=False, default=""),
    Column("agent", String(100), nullable=False, default=""),
    Column("model", String(100), nullable=False, default=""),
    Column("stage", String(40), nullable=False),
    Column("stage_error", Text, nullable=False, default=""),
    Column("failed_stage", String(40), nullable=False, default=""),
    Column("stage_updated_at", UtcDateTime(), nullable=True),
    Column("owner_user", String(200), nullable=True),
    Column("owner_login", String(200), nullable=False, default=""),
    Column("owner_email", String(300), nullable=False, default=""),
    Column("owner_avatar_url", Text, nullable=False, default=""),
    Column("owner_updated_at", UtcDateTime(), nullable=True),
    Column("pull_request", LargeBinary, nullable=True),
    Column("sandbox_state", Integer, nullable=False, default=0),
    Column("sandbox_provider", String(50), nullable=False, default=""),
    Column("sandbox_cwd", Text, nullable=False, default=""),
    Column("sandbox_error", Text, nullable=False, default=""),
    Column("git_state", LargeBinary, nullable=True),
    Column("git_state_version", BigInteger, nullable=False, default=0),
    Column("request_id", String(100), nullable=True),
    Column("publish_state", String(20), nullable=False, default=""),
    Column("publish_request_id", String(100), nullable=True),
    Column("publish_title", Text, nullable=False, default=""),
    Column("publish_body", Text, nullable=False, default=""),
    Column("publish_draft", Boolean, nullable=False, default=False),
    Column("publish_error", Text, nullable=False, default=""),
    Column("publish_head_commit", String(64), nullable=False, default=""),
    Column("publish_requested_at", UtcDateTime(), nullable=True),
    Column("publish_updated_at", UtcDateTime(), nullable=True),
    Column("publish_push_only", Boolean, nullable=False, default=False),
    Column("file_reverts", JSON, nullable=False, default=list),  # usecases/file_reverts.py
    Column("version", BigInteger, nullable=False, default=0),
    Column("lease_owner", String(100), nullable=True),
    Column("lease_until", UtcDateTime(), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("ended_at", UtcDateTime(), nullable=True),
    UniqueConstraint("organization", "request_id", name="uq_tasks_request_id"),
)
Index("ix_tasks_org_updated", tasks.c.organization, tasks.c.updated_at)
Index("ix_tasks_repository_branch", tasks.c.repository, tasks.c.branch)
Index("ix_tasks_stage", tasks.c.stage)
Index("ix_tasks_publish_state", tasks.c.publish_state)

# Sessions (agent tabs) of a task, in creation order (`position`).
sessions = Table(
    "sessions",
    metadata,
    Column("id", String(100), primary_key=True),
    Column("task_id", String(100), nullable=False),
    Column("organization", String(100), nullable=False),
    Column("position", Integer, nullable=False),
    Column("display_name", String(200), nullable=False),
    Column("agent", String(100), nullable=False, default=""),
    Column("model", String(100), nullable=False, default=""),
    Column("status", String(40), nullable=False),
    Column("error_message", Text, nullable=False, default=""),
    Column("used", Boolean, nullable=False, default=False),
    Column("thinking_since", UtcDateTime(), nullable=True),
    Column("current_turn", String(100), nullable=False, default=""),
    Column("sandbox_session", String(400), nullable=False, default=""),
    Column("request_id", String(100), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("closed_at", UtcDateTime(), nullable=True),
    # Session commands (usecases/session_commands.py): what the agent session has applied, and
    # when the pending command was last enqueued (the sweep re-enqueues one left behind).
    Column("agent_model", String(100), nullable=False, default=""),
    Column("agent_closed", Boolean, nullable=False, default=False),
    Column("stop_requested_at", UtcDateTime(), nullable=True),
    Column("command_at", UtcDateTime(), nullable=True),
    # What happened to the last turn when it did not end on its own (an interruption).
    Column("notice", Text, nullable=False, default=""),
    UniqueConstraint("task_id", "request_id", name="uq_sessions_request_id"),
)
Index("ix_sessions_task", sessions.c.task_id, sessions.c.position)

# Messages sent to sessions; the id is the sandbox turn id (PromptSession is idempotent on it).
messages = Table(
    "messages",
    metadata,
    Column("id", String(100), primary_key=True),
    Column("session_id", String(100), nullable=False),
    Column("task_id", String(100), nullable=False),
    Column("text", Text, nullable=False),
    Column("attachments", JSON, nullable=False),
    Column("user", String(200), nullable=False, default=""),
    Column("state", String(20), nullable=False),
    Column("request_id", String(100), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    # When the turn sweep last handed this open message to the sandbox again (`sessions.resend_stale`).
    Column("resent_at", UtcDateTime(), nullable=True),
    UniqueConstraint("session_id", "request_id", name="uq_messages_request_id"),
)
Index("ix_messages_session", messages.c.session_id, messages.c.created_at)
Index("ix_messages_state", messages.c.state, messages.c.created_at)  # the sweep's open messages

# Per-user state of a task (active tab) and of each session (unread, draft); never on the task row.
user_task_states = Table(
    "user_task_states",
    metadata,
    Column("task_id", String(100), primary_key=True),
    Column("user_id", String(100), primary_key=True),
    Column("active_session", String(100), nullable=False, default=""),
    Column("updated_at", UtcDateTime(), nullable=False),
)

user_session_states = Table(
    "user_session_states",
    metadata,
    Column("session_id", String(100), primary_key=True),
    Column("user_id", String(100), primary_key=True),
    Column("task_id", String(100), nullable=False),
    Column("unread", Boolean, nullable=False, default=False),
    Column("draft_text", Text, nullable=False, default=""),
    Column("draft_attachments", JSON, nullable=False),
    Column("draft_updated_at", UtcDateTime(), nullable=True),
    Column("updated_at", UtcDateTime(), nullable=False),
)
Index("ix_user_session_states_task", user_session_states.c.task_id, user_session_states.c.user_id)
