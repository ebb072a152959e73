"""Tables owned by the organization service (only it writes them).

Times are `UtcDateTime` columns (`*_time`, the platform's one timestamp type; aware UTC on SQLite and
PostgreSQL alike). Projection rows keep the serialized protobuf they serve
(`summary`) next to the few columns queries filter or sort on, so a read is one scan and no joins.
"""

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

from services.platform.clock import EPOCH
from services.platform.db import UtcDateTime, new_metadata

metadata = new_metadata()

_ID = 64
_NAME = 400

# -- tenancy --------------------------------------------------------------------------------------

organizations = Table(
    "organizations",
    metadata,
    Column("id", String(_ID), primary_key=True),
    Column("kind", Integer, nullable=False),  # OrganizationKind
    Column("display_name", String(200), nullable=False),
    Column("slug", String(_ID), nullable=False),
    Column("primary_domain", String(200), nullable=False),
    Column("default_model", String(200), nullable=False, default=""),
    Column("auto_import_repositories", Boolean, nullable=False, default=True),
    Column("provider", Integer, nullable=False),  # github_data Provider
    Column("github_login", String(200), nullable=False, default=""),
    Column("github_account_id", BigInteger, nullable=False, default=0),
    Column("local_root_path", Text, nullable=False, default=""),
    Column("sandbox_egress", Integer, nullable=False, default=0, server_default="0"),  # SandboxEgress
    # PermissionPolicy of its agents' permission requests (0: the default, allow).
    Column("permission_policy", Integer, nullable=False, default=0, server_default="0"),
    Column("request_id", String(_ID), nullable=True),  # ConnectLocalOrganization idempotency
    Column("create_time", UtcDateTime(), nullable=False),
    Column("update_time", UtcDateTime(), nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", String(_ID), primary_key=True),
    Column("identity_provider", Integer, nullable=False),
    Column("login", String(200), nullable=False),
    Column("display_name", String(200), nullable=False),
    Column("email", String(320), nullable=False, default=""),
    Column("avatar_url", Text, nullable=False, default=""),
    Column("github_account_id", BigInteger, nullable=False, default=0),
    Column("role_label", String(200), nullable=False, default=""),
    Column("default_model", String(200), nullable=False, default=""),
    Column("create_time", UtcDateTime(), nullable=False),
    Column("update_time", UtcDateTime(), nullable=False),
    Column("last_sign_in_time", UtcDateTime(), nullable=False),
)

# Organizations' model API keys, one per agent environment variable: `secret` is the Fernet token of
# the key (services/organization/usecases/model_credentials.py), never plaintext; never returned by
# reads other than ResolveModelCredentials (service callers).
model_credentials = Table(
    "model_credentials",
    metadata,
    Column("organization_id", String(_ID), primary_key=True),
    Column("variable", String(200), primary_key=True),
    Column("secret", LargeBinary, nullable=False),
    Column("update_user", String(_ID), nullable=False, default="", server_default=""),
    Column("update_time", UtcDateTime(), nullable=False),
)

auth_sessions = Table(
    "auth_sessions",
    metadata,
    Column("id", String(_ID), primary_key=True),
    Column("user_id", String(_ID), nullable=False, index=True),
    Column("active_organization", String(_NAME), nullable=False, default=""),
    Column("user_agent", Text, nullable=False, default=""),
    Column("create_time", UtcDateTime(), nullable=False),
    Column("expire_time", UtcDateTime(), nullable=False),
    Column("revoke_time", UtcDateTime(), nullable=True),
)

members = Table(
    "members",
    metadata,
    Column("organization_id", String(_ID), primary_key=True),
    Column("user_id", String(_ID), primary_key=True),
    Column("login", String(200), nullable=False),
    Column("display_name", String(200), nullable=False),
    Column("email", String(320), nullable=False, default=""),
    Column("avatar_url", Text, nullable=False, default=""),
    Column("role", Integer, nullable=False),  # MemberRole
    Column("state", Integer, nullable=False),  # MemberState
    Column("create_time", UtcDateTime(), nullable=False),
    Column("update_time", UtcDateTime(), nullable=False),
)
Index("ix_members_user_id", members.c.user_id)

# -- task index -----------------------------------------------------------------------------------

task_index = Table(
    "task_index",
    metadata,
    Column("organization_id", String(_ID), primary_key=True),
    Column("task_id", String(_ID), primary_key=True),
    Column("repository", String(_NAME), nullable=False),
    Column("branch", String(_NAME), nullable=False),
    Column("title", Text, nullable=False, default=""),
    Column("virtual", Boolean, nullable=False, default=False),
    Column("pull_request", LargeBinary, nullable=True),  # PullRequestSummary
    Column("create_time", UtcDateTime(), nullable=False),
    Column("update_time", UtcDateTime(), nullable=False),
    UniqueConstraint("organization_id", "repository", "branch", name="uq_task_index_branch"),
)

# -- organization summary projection --------------------------------------------------------------

task_summaries = Table(
    "task_summaries",
    metadata,
    Column("organization_id", String(_ID), primary_key=True),
    Column("task_id", String(_ID), primary_key=True),
    Column("repository", String(_NAME), nullable=False),
    Column("counted", Boolean, nullable=False),  # counts toward the repository's task_count
    Column("update_time", UtcDateTime(), nullable=False),
    Column("summary", LargeBinary, nullable=False),  # foundry.task.v1.TaskSummary
)
Index("ix_task_summaries_recent", task_summaries.c.organization_id, task_summaries.c.update_time)
Index("ix_task_summaries_repository", task_summaries.c.organization_id, task_summaries.c.repository)

# A repository appears in the summary while github-data lists it (`listed`) or a task refers to it.
# Its own update and latest activity are the epoch when unknown (never NULL: both databases sort it last).
repositories = Table(
    "repositories",
    metadata,
    Column("organization_id", String(_ID), primary_key=True),
    Column("name", String(_NAME), primary_key=True),
    Column("full_name", String(300), nullable=False),
    Column("default_branch", String(_NAME), nullable=False, default=""),
    Column("listed", Boolean, nullable=False),
    Column("own_update_time", UtcDateTime(), nullable=False, default=EPOCH),
    Column("task_count", Integer, nullable=False, default=0),
    Column("latest_activity_time", UtcDateTime(), nullable=False, default=EPOCH),
)

open_pull_requests = Table(
    "open_pull_requests",
    metadata,
    Column("name", String(_NAME), primary_key=True),
    Column("organization_id", String(_ID), nullable=False),
    Column("repository", String(_NAME), nullable=False),
    Column("head_branch", String(_NAME), nullable=False),
    Column("update_time", UtcDateTime(), nullable=False),
    Column("summary", LargeBinary, nullable=False),  # foundry.github_data.v1.PullRequestSummary
)
Index("ix_open_pull_requests_recent", open_pull_requests.c.organization_id, open_pull_requests.c.update_time)

sync_statuses = Table(
    "sync_statuses",
    metadata,
    Column("organization_id", String(_ID), primary_key=True),
    Column("status", LargeBinary, nullable=False),  # foundry.github_data.v1.SyncStatus
)

# The newest applied version of every entity an event named (kept after removals, so an older
# event that arrives late is still recognised as old).
applied_versions = Table(
    "applied_versions",
    metadata,
    Column("name", String(_NAME), primary_key=True),
    Column("version", BigInteger, nullable=False),
)

# -- audit log ------------------------------------------------------------------------------------

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("organization_id", String(_ID), nullable=False),
    Column("event_id", String(_ID), nullable=False),
    Column("kind", String(200), nullable=False),
    Column("repository", String(_NAME), nullable=False, default=""),
    Column("task", String(_NAME), nullable=False, default=""),
    Column("branch", String(_NAME), nullable=False, default=""),
    Column("actor", String(200), nullable=False, default=""),
    Column("payload", JSON, nullable=False),
    Column("create_time", UtcDateTime(), nullable=False),
    UniqueConstraint("organization_id", "event_id", name="uq_audit_events_event_id"),
)
Index("ix_audit_events_recent", audit_events.c.organization_id, audit_events.c.create_time, audit_events.c.id)

# -- GitHub discovery (github-data's `github_data.user_accounts.changed` events) ---------------------

# The last organization discovery of each GitHub user as github-data reported it (`state` queued |
# running | synced | failed, with the readable cause of a persistent failure); served as
# AppSnapshot.github_discovery. The tokens and the GitHub reads are github-data's.
github_discoveries = Table(
    "github_discoveries",
    metadata,
    Column("user_id", String(_ID), primary_key=True),
    Column("state", String(20), nullable=False),
    Column("error_message", Text, nullable=False, default=""),
    Column("update_time", UtcDateTime(), nullable=False),
    Column("synced_time", UtcDateTime(), nullable=True),
)

# The GitHub App installation of each GitHub-backed organization as discovery last saw it, and the
# connection it asked github-data for (so a rediscovery with the same answer connects nothing).
github_installations = Table(
    "github_installations",
    metadata,
    Column("organization_id", String(_ID), primary_key=True),
    Column("installation_status", Integer, nullable=False),  # github_data InstallationStatus
    Column("installation_id", BigInteger, nullable=False, default=0),
    Column("connected_installation_id", BigInteger, nullable=True),  # None: never connected
    Column("update_time", UtcDateTime(), nullable=False),
)
Index("ix_organizations_github_account", organizations.c.provider, organizations.c.github_account_id)
