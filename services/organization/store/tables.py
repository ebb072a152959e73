"""Tables owned by the organization service (only it writes them).

Times are stored as integer microseconds since the epoch (`*_us`): they sort the same on SQLite and
PostgreSQL and need no time-zone handling. Projection rows keep the serialized protobuf they serve
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

from services.platform.db import new_metadata

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
    Column("request_id", String(_ID), nullable=True),  # ConnectLocalOrganization idempotency
    Column("create_us", BigInteger, nullable=False),
    Column("update_us", BigInteger, nullable=False),
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
    Column("create_us", BigInteger, nullable=False),
    Column("update_us", BigInteger, nullable=False),
    Column("last_sign_in_us", BigInteger, nullable=False),
)

# The newest OAuth token per user; never returned by reads other than ResolveGithubToken.
github_tokens = Table(
    "github_tokens",
    metadata,
    Column("user_id", String(_ID), primary_key=True),
    Column("access_token", Text, nullable=False),
    Column("scopes", JSON, nullable=False),
    Column("expire_us", BigInteger, nullable=True),
    Column("update_us", BigInteger, nullable=False),
)

auth_sessions = Table(
    "auth_sessions",
    metadata,
    Column("id", String(_ID), primary_key=True),
    Column("user_id", String(_ID), nullable=False, index=True),
    Column("active_organization", String(_NAME), nullable=False, default=""),
    Column("user_agent", Text, nullable=False, default=""),
    Column("create_us", BigInteger, nullable=False),
    Column("expire_us", BigInteger, nullable=False),
    Column("revoke_us", BigInteger, nullable=True),
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
    Column("create_us", BigInteger, nullable=False),
    Column("update_us", BigInteger, nullable=False),
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
    Column("create_us", BigInteger, nullable=False),
    Column("update_us", BigInteger, nullable=False),
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
    Column("update_us", BigInteger, nullable=False),
    Column("summary", LargeBinary, nullable=False),  # foundry.task.v1.TaskSummary
)
Index("ix_task_summaries_recent", task_summaries.c.organization_id, task_summaries.c.update_us)
Index("ix_task_summaries_repository", task_summaries.c.organization_id, task_summaries.c.repository)

# A repository appears in the summary while github-data lists it (`listed`) or a task refers to it.
repositories = Table(
    "repositories",
    metadata,
    Column("organization_id", String(_ID), primary_key=True),
    Column("name", String(_NAME), primary_key=True),
    Column("full_name", String(300), nullable=False),
    Column("default_branch", String(_NAME), nullable=False, default=""),
    Column("listed", Boolean, nullable=False),
    Column("own_update_us", BigInteger, nullable=False, default=0),
    Column("task_count", Integer, nullable=False, default=0),
    Column("latest_activity_us", BigInteger, nullable=False, default=0),
)

open_pull_requests = Table(
    "open_pull_requests",
    metadata,
    Column("name", String(_NAME), primary_key=True),
    Column("organization_id", String(_ID), nullable=False),
    Column("repository", String(_NAME), nullable=False),
    Column("head_branch", String(_NAME), nullable=False),
    Column("update_us", BigInteger, nullable=False),
    Column("summary", LargeBinary, nullable=False),  # foundry.github_data.v1.PullRequestSummary
)
Index("ix_open_pull_requests_recent", open_pull_requests.c.organization_id, open_pull_requests.c.update_us)

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
    Column("create_us", BigInteger, nullable=False),
    UniqueConstraint("organization_id", "event_id", name="uq_audit_events_event_id"),
)
Index("ix_audit_events_recent", audit_events.c.organization_id, audit_events.c.create_us, audit_events.c.id)

# -- GitHub discovery (SignInWithGithub → SyncGithubUser) ---------------------------------------------

# The last organization discovery of each GitHub user: `state` queued | running | synced | failed,
# with the readable cause of a persistent failure; served as AppSnapshot.github_discovery.
github_discoveries = Table(
    "github_discoveries",
    metadata,
    Column("user_id", String(_ID), primary_key=True),
    Column("state", String(20), nullable=False),
    Column("error_message", Text, nullable=False, default=""),
    Column("update_us", BigInteger, nullable=False),
    Column("synced_us", BigInteger, nullable=True),
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
    Column("update_us", BigInteger, nullable=False),
)
Index("ix_organizations_github_account", organizations.c.provider, organizations.c.github_account_id)
