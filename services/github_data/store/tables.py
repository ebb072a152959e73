"""Tables owned by the github_data service (only it writes them).

Every row is keyed by the organization id (`acme` for `organizations/acme`). Timestamps are UTC.
Entity versions (repositories, pull requests, the sync status) come from one per-organization
counter (`sync_status.seq`), so they only grow, even for a pull request deleted and seen again.
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
)

from services.platform.db import UtcDateTime, new_metadata

metadata = new_metadata()

# One per organization: where its data comes from.
connections = Table(
    "connections",
    metadata,
    Column("organization", String(200), primary_key=True),
    Column("provider", String(16), nullable=False),  # local | github
    Column("root_path", Text, nullable=True),
    Column("account_login", String(200), nullable=True),
    Column("account_id", BigInteger, nullable=True),
    Column("account_type", String(16), nullable=True),  # user | organization
    Column("installation_id", BigInteger, nullable=True),
    Column("token_user", String(200), nullable=True),
    Column("api_url", Text, nullable=True),  # GitHub Enterprise Server override; NULL = settings
    Column("installation_status", String(32), nullable=False),
    Column("create_time", UtcDateTime(), nullable=False),
    Column("update_time", UtcDateTime(), nullable=False),
)
Index("ix_connections_account_login", connections.c.account_login)

# One per organization: the sync status shown to people, and the durable state of the sync job.
sync_status = Table(
    "sync_status",
    metadata,
    Column("organization", String(200), primary_key=True),
    Column("state", String(16), nullable=False),  # pending | syncing | synced | error
    Column("phase", String(40), nullable=True),
    Column("label", Text, nullable=False, default=""),
    Column("processed", Integer, nullable=False, default=0),
    Column("total", Integer, nullable=False, default=0),
    Column("generation", BigInteger, nullable=False, default=0),
    Column("last_sync_time", UtcDateTime(), nullable=True),
    Column("last_webhook_time", UtcDateTime(), nullable=True),
    Column("last_webhook_event", String(200), nullable=False, default=""),
    Column("error_message", Text, nullable=False, default=""),
    Column("version", BigInteger, nullable=False, default=0),
    Column("seq", BigInteger, nullable=False, default=0),
    # The job: idle | queued | running. `job_token` fences concurrent runners of one generation.
    Column("job_state", String(16), nullable=False, default="idle"),
    Column("job_token", String(64), nullable=True),
    # Until when the runner holding `job_token` is known alive (renewed while it runs): no other runner
    # claims the job before then, so one organization's sync has one runner across replicas and restarts.
    Column("job_lease_until", UtcDateTime(), nullable=True),
    Column("job_reason", Text, nullable=False, default=""),
    Column("job_started_at", UtcDateTime(), nullable=True),
    # Why a sync was asked for while this one ran ("" when none was): it runs once this one ends, as
    # the running one may have listed the repositories before the change that prompted the request.
    Column("job_rerun", Text, nullable=False, default="", server_default=""),
    Column("update_time", UtcDateTime(), nullable=False),
)

repositories = Table(
    "repositories",
    metadata,
    Column("organization", String(200), primary_key=True),
    Column("repo_id", String(32), primary_key=True),
    Column("full_name", String(400), nullable=False),
    Column("clone_url", Text, nullable=False),
    Column("html_url", Text, nullable=False, default=""),
    Column("private", Boolean, nullable=False, default=False),
    Column("default_branch", String(255), nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("sync_generation", BigInteger, nullable=False),
    Column("provider_update_time", UtcDateTime(), nullable=True),
    Column("version", BigInteger, nullable=False),
    Column("create_time", UtcDateTime(), nullable=False),
    Column("update_time", UtcDateTime(), nullable=False),
)
Index("ix_repositories_org_full_name", repositories.c.organization, repositories.c.full_name)

pull_requests = Table(
    "pull_requests",
    metadata,
    Column("organization", String(200), primary_key=True),
    Column("repo_id", String(32), primary_key=True),
    Column("number", BigInteger, primary_key=True),
    Column("repository_full_name", String(400), nullable=False),
    Column("title", Text, nullable=False),
    Column("body", Text, nullable=False, default=""),
    Column("state", String(16), nullable=False),  # OPEN | DRAFT (closed/merged rows are deleted)
    Column("draft", Boolean, nullable=False, default=False),
    Column("url", Text, nullable=False, default=""),
    Column("head_branch", String(255), nullable=False),
    Column("base_branch", String(255), nullable=False),
    Column("author_login", String(200), nullable=False, default=""),
    Column("create_time", UtcDateTime(), nullable=True),
    Column("provider_update_time", UtcDateTime(), nullable=True),
    Column("sync_generation", BigInteger, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("update_time", UtcDateTime(), nullable=False),
)
Index(
    "ix_pull_requests_org_updated",
    pull_requests.c.organization,
    pull_requests.c.provider_update_time,
)
Index("ix_pull_requests_org_head", pull_requests.c.organization, pull_requests.c.head_branch)

github_members = Table(
    "github_members",
    metadata,
    Column("organization", String(200), primary_key=True),
    Column("member_id", String(40), primary_key=True),
    Column("login", String(200), nullable=False),
    Column("display_name", String(400), nullable=False, default=""),
    Column("email", String(400), nullable=False, default=""),
    Column("avatar_url", Text, nullable=False, default=""),
    Column("role", String(40), nullable=False, default=""),
    Column("state", String(40), nullable=False, default=""),
    Column("sync_generation", BigInteger, nullable=False),
    Column("update_time", UtcDateTime(), nullable=False),
)

# Webhook inbox, deduplicated by the X-GitHub-Delivery id.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("delivery_id", String(100), primary_key=True),
    Column("event", String(100), nullable=False),
    Column("action", String(100), nullable=False, default=""),
    Column("payload", LargeBinary, nullable=False),
    Column("organization", String(200), nullable=False, default=""),
    Column("state", String(16), nullable=False),  # queued | handled | ignored | failed
    Column("detail", Text, nullable=False, default=""),
    Column("receive_time", UtcDateTime(), nullable=False),
    Column("handle_time", UtcDateTime(), nullable=True),
)

# The newest OAuth token per user (`user_id` is the GitHub account id, as in `users/{user}`). Written
# by SetGithubToken only; never returned by any read. Stored sealed (services.platform.secrets,
# under FOUNDRY_CREDENTIALS_KEY, bound to `user_id`), never in plaintext.
user_tokens = Table(
    "user_tokens",
    metadata,
    Column("user_id", String(100), primary_key=True),
    Column("sealed_token", LargeBinary, nullable=False),
    Column("scopes", JSON, nullable=False),
    Column("expire_time", UtcDateTime(), nullable=True),
    Column("update_time", UtcDateTime(), nullable=False),
)

# Where each user's account discovery is; `version` orders the user_accounts.changed events.
user_discoveries = Table(
    "user_discoveries",
    metadata,
    Column("user_id", String(100), primary_key=True),
    Column("state", String(16), nullable=False),  # pending | running | done | error
    Column("error_message", Text, nullable=False, default=""),
    Column("version", BigInteger, nullable=False),
    Column("update_time", UtcDateTime(), nullable=False),
    Column("last_success_time", UtcDateTime(), nullable=True),
)

# The GitHub accounts (the user's own and their organizations) the user's token saw at the last
# completed discovery: whose token may read an organization connected without a token user.
user_accounts = Table(
    "user_accounts",
    metadata,
    Column("user_id", String(100), primary_key=True),
    Column("account_id", BigInteger, primary_key=True),
    Column("login", String(200), nullable=False),
)
Index("ix_user_accounts_account", user_accounts.c.account_id)
