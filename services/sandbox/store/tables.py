"""Tables owned by the sandbox service (only it writes them).

States are stored as the lowercase proto enum names (`running`, `idle`, ...). Every entity that is
published carries a `version` that grows with each change (events and consumers compare it).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from services.platform.db import UtcDateTime, new_metadata

metadata = new_metadata()

_ID = 128

sandboxes = Table(
    "sandboxes",
    metadata,
    Column("organization", String(_ID), primary_key=True),
    Column("sandbox_id", String(_ID), primary_key=True),
    Column("task", String(512), nullable=False),
    Column("repository", String(512), nullable=False),
    Column("provider", String(32), nullable=False),
    Column("provider_sandbox_id", String(512), nullable=False, server_default=""),
    Column("state", String(16), nullable=False),
    Column("checkout", JSON, nullable=True),  # RepositoryCheckout fields; null until prepared
    Column("error_message", Text, nullable=False, server_default=""),
    Column("create_time", UtcDateTime(), nullable=False),
    Column("update_time", UtcDateTime(), nullable=False),
    Column("destroy_time", UtcDateTime(), nullable=True),
    Column("version", BigInteger, nullable=False, server_default="1"),
    Column("processes_version", BigInteger, nullable=False, server_default="0"),
    # The owning replica's address (settings.sandbox.replica_address; "" = the only replica).
    Column("replica", String(256), nullable=False, server_default=""),
    # Warm pool (usecases/warm_pool.py): "" for a task's own sandbox; `preparing` / `warm` while it
    # waits unclaimed (task ""), `claimed` once a task took it (then named after the task),
    # `discarded` when it was thrown away unclaimed.
    Column("pool", String(16), nullable=False, server_default=""),
    # The egress policy the sandbox was created with ("" = the service's default).
    Column("egress_policy", String(16), nullable=False, server_default=""),
    Index("ix_sandboxes_pool", "pool"),
)

# One warm pool per (organization, repository, owning replica): what its warm sandboxes are prepared
# from. Registered when a task's sandbox of the repository was prepared; the egress policy is the
# organization's as of then (updated when a claim finds it changed).
warm_pools = Table(
    "warm_pools",
    metadata,
    Column("organization", String(_ID), primary_key=True),
    Column("repository", String(512), primary_key=True),
    Column("replica", String(256), primary_key=True, server_default=""),
    Column("clone_url", Text, nullable=False),
    Column("base_branch", String(256), nullable=False),
    Column("egress_policy", String(16), nullable=False, server_default=""),
    Column("agent", String(_ID), nullable=False),
    Column("create_time", UtcDateTime(), nullable=False),
    Column("update_time", UtcDateTime(), nullable=False),
)

agent_sessions = Table(
    "agent_sessions",
    metadata,
    Column("organization", String(_ID), primary_key=True),
    Column("sandbox_id", String(_ID), primary_key=True),
    Column("session_id", String(_ID), primary_key=True),
    Column("agent", String(_ID), nullable=False),
    Column("model", String(256), nullable=False, server_default=""),
    Column("mode", String(256), nullable=False, server_default=""),
    Column("permission_policy", String(16), nullable=False),
    Column("acp_session_id", String(512), nullable=False, server_default=""),
    Column("state", String(16), nullable=False),
    Column("current_turn", String(_ID), nullable=False, server_default=""),  # the claim: one turn at a time
    Column("last_event_seq", BigInteger, nullable=False, server_default="0"),
    Column("turn_count", BigInteger, nullable=False, server_default="0"),
    Column("error_message", Text, nullable=False, server_default=""),
    Column("create_time", UtcDateTime(), nullable=False),
    Column("update_time", UtcDateTime(), nullable=False),
    Column("close_time", UtcDateTime(), nullable=True),
    Column("version", BigInteger, nullable=False, server_default="1"),
)

turns = Table(
    "turns",
    metadata,
    Column("organization", String(_ID), primary_key=True),
    Column("sandbox_id", String(_ID), primary_key=True),
    Column("session_id", String(_ID), primary_key=True),
    Column("turn_id", String(_ID), primary_key=True),
    Column("position", BigInteger, nullable=False),  # order of PromptSession calls within the session
    Column("state", String(16), nullable=False),
    Column("text", Text, nullable=False),
    Column("attachments", JSON, nullable=False),
    Column("user", String(256), nullable=False, server_default=""),
    Column("stop_reason", String(32), nullable=False, server_default=""),
    Column("error_message", Text, nullable=False, server_default=""),
    Column("first_event_seq", BigInteger, nullable=False, server_default="0"),
    Column("last_event_seq", BigInteger, nullable=False, server_default="0"),
    Column("cancel_requested", Boolean, nullable=False, server_default="0"),
    Column("runner", String(256), nullable=False, server_default=""),  # host:pid:instance of the runner
    Column("agent_pid", Integer, nullable=False, server_default="0"),
    Column("heartbeat_time", UtcDateTime(), nullable=True),
    Column("create_time", UtcDateTime(), nullable=False),
    Column("start_time", UtcDateTime(), nullable=True),
    Column("end_time", UtcDateTime(), nullable=True),
    Index("ix_turns_state", "state"),
)

session_events = Table(
    "session_events",
    metadata,
    Column("organization", String(_ID), primary_key=True),
    Column("sandbox_id", String(_ID), primary_key=True),
    Column("session_id", String(_ID), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("create_time", UtcDateTime(), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("sender", String(16), nullable=False),
    Column("turn_id", String(_ID), nullable=False, server_default=""),
    Column("text", Text, nullable=False, server_default=""),
    Column("payload", JSON, nullable=False),
)

# Agents' permission requests asked of the user (policy ASK): PENDING until answered or cancelled.
permission_requests = Table(
    "permission_requests",
    metadata,
    Column("organization", String(_ID), primary_key=True),
    Column("sandbox_id", String(_ID), primary_key=True),
    Column("session_id", String(_ID), primary_key=True),
    Column("request_id", String(_ID), primary_key=True),
    Column("turn_id", String(_ID), nullable=False, server_default=""),
    Column("title", Text, nullable=False, server_default=""),
    Column("tool_call", JSON, nullable=False),  # the agent's ACP toolCall object
    Column("options", JSON, nullable=False),  # the agent's ACP permission options
    Column("state", String(16), nullable=False),  # pending | answered | cancelled
    Column("outcome", String(16), nullable=False, server_default=""),
    Column("option_id", String(256), nullable=False, server_default=""),
    Column("answered_by", String(256), nullable=False, server_default=""),
    Column("delivered", Boolean, nullable=False, server_default="0"),
    Column("create_time", UtcDateTime(), nullable=False),
    Column("answer_time", UtcDateTime(), nullable=True),
    Index("ix_permission_requests_state", "state"),
)

git_states = Table(
    "git_states",
    metadata,
    Column("organization", String(_ID), primary_key=True),
    Column("sandbox_id", String(_ID), primary_key=True),
    Column("state", JSON, nullable=False),
    Column("compute_time", UtcDateTime(), nullable=False),
    Column("version", BigInteger, nullable=False),
)

processes = Table(
    "processes",
    metadata,
    Column("organization", String(_ID), primary_key=True),
    Column("sandbox_id", String(_ID), primary_key=True),
    Column("process_id", String(_ID), primary_key=True),
    Column("request_id", String(_ID), nullable=True),
    Column("command", Text, nullable=False),
    Column("args", JSON, nullable=False),
    Column("cwd", Text, nullable=False, server_default=""),
    Column("env", JSON, nullable=False),
    Column("tty", Boolean, nullable=False, server_default="0"),
    Column("interactive", Boolean, nullable=False, server_default="0"),
    Column("pid", Integer, nullable=False, server_default="0"),
    Column("state", String(16), nullable=False),
    Column("exit_code", Integer, nullable=True),
    Column("exit_signal", Integer, nullable=False, server_default="0"),
    Column("output_size_bytes", BigInteger, nullable=False, server_default="0"),
    Column("create_time", UtcDateTime(), nullable=False),
    Column("exit_time", UtcDateTime(), nullable=True),
    UniqueConstraint("organization", "sandbox_id", "request_id", name="uq_processes_request"),
)
