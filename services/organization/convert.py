"""Stored rows → API messages (the organization service's resources)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from foundry.github_data.v1 import events_pb2 as gh_events_pb2
from foundry.github_data.v1 import pull_request_pb2 as pr_pb2
from foundry.github_data.v1 import sync_status_pb2
from foundry.organization.v1 import (
    app_snapshot_pb2,
    audit_event_pb2,
    member_pb2,
    organization_pb2,
    task_index_pb2,
    user_pb2,
)
from google.protobuf import struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from services.organization.domain.github_accounts import AppInstallation, GithubAccount
from services.platform.timestamps import to_timestamp

# github_discoveries.state → GithubDiscoveryState
_DISCOVERY_STATES = {
    "queued": app_snapshot_pb2.GITHUB_DISCOVERY_STATE_PENDING,
    "running": app_snapshot_pb2.GITHUB_DISCOVERY_STATE_RUNNING,
    "synced": app_snapshot_pb2.GITHUB_DISCOVERY_STATE_DONE,
    "failed": app_snapshot_pb2.GITHUB_DISCOVERY_STATE_ERROR,
}


def github_discovery(row: Any) -> app_snapshot_pb2.GithubDiscovery:
    """A `github_discoveries` row as the app shell's GithubDiscovery (`users/{user}/githubDiscovery`)."""
    state = _DISCOVERY_STATES.get(row.state, app_snapshot_pb2.GITHUB_DISCOVERY_STATE_UNSPECIFIED)
    d = app_snapshot_pb2.GithubDiscovery(
        name=github_discovery_name(row.user_id),
        state=state,
        message=row.error_message if state == app_snapshot_pb2.GITHUB_DISCOVERY_STATE_ERROR else "",
    )
    d.update_time.CopyFrom(timestamp(row.update_time))
    if row.synced_time is not None:
        d.last_success_time.CopyFrom(timestamp(row.synced_time))
    return d


def github_discovery_name(user_id: str) -> str:
    return f"users/{user_id}/githubDiscovery"


def _github_account(a: gh_events_pb2.GithubAccount) -> GithubAccount:
    return GithubAccount(login=a.login, account_id=a.account_id, name=a.display_name, avatar_url=a.avatar_url)


def discovered_accounts(
    event: gh_events_pb2.UserAccountsChanged,
) -> tuple[GithubAccount, list[GithubAccount], list[AppInstallation] | None]:
    """(viewer, organizations, installations or None when none were read) of a DONE discovery."""
    installations = None
    if event.installations_listed:
        installations = [
            AppInstallation(
                installation_id=i.installation_id, account_login=i.account_login, account_id=i.account_id
            )
            for i in event.installations
        ]
    return (
        _github_account(event.viewer),
        [_github_account(o) for o in event.organizations],
        installations,
    )


def organization(row: Any, sync_status: bytes | None = None) -> organization_pb2.Organization:
    org = organization_pb2.Organization(
        name=f"organizations/{row.id}",
        kind=row.kind,
        display_name=row.display_name,
        slug=row.slug,
        primary_domain=row.primary_domain,
        default_model=row.default_model,
        auto_import_repositories=row.auto_import_repositories,
        provider=row.provider,
        github_login=row.github_login,
        github_account_id=row.github_account_id,
        local_root_path=row.local_root_path,
        sandbox_egress=row.sandbox_egress,
        permission_policy=row.permission_policy,
    )
    if sync_status is not None:
        org.sync_status.CopyFrom(sync_status_pb2.SyncStatus.FromString(sync_status))
    org.create_time.CopyFrom(timestamp(row.create_time))
    org.update_time.CopyFrom(timestamp(row.update_time))
    return org


def member(row: Any) -> member_pb2.Member:
    m = member_pb2.Member(
        name=f"organizations/{row.organization_id}/members/{row.user_id}",
        user=f"users/{row.user_id}",
        login=row.login,
        display_name=row.display_name,
        email=row.email,
        avatar_url=row.avatar_url,
        role=row.role,
        state=row.state,
    )
    m.create_time.CopyFrom(timestamp(row.create_time))
    m.update_time.CopyFrom(timestamp(row.update_time))
    return m


def user(row: Any, eligible: list[str]) -> user_pb2.User:
    u = user_pb2.User(
        name=f"users/{row.id}",
        identity_provider=row.identity_provider,
        login=row.login,
        display_name=row.display_name,
        email=row.email,
        avatar_url=row.avatar_url,
        github_account_id=row.github_account_id,
        role_label=row.role_label,
        default_model=row.default_model,
        eligible_organizations=[f"organizations/{o}" for o in eligible],
    )
    u.create_time.CopyFrom(timestamp(row.create_time))
    u.update_time.CopyFrom(timestamp(row.update_time))
    u.last_sign_in_time.CopyFrom(timestamp(row.last_sign_in_time))
    return u


def auth_session(row: Any) -> user_pb2.AuthSession:
    s = user_pb2.AuthSession(
        name=f"users/{row.user_id}/authSessions/{row.id}",
        active_organization=row.active_organization,
        user_agent=row.user_agent,
    )
    s.create_time.CopyFrom(timestamp(row.create_time))
    s.expire_time.CopyFrom(timestamp(row.expire_time))
    if row.revoke_time is not None:
        s.revoke_time.CopyFrom(timestamp(row.revoke_time))
    return s


def task_index_entry(row: Any) -> task_index_pb2.TaskIndexEntry:
    org = row.organization_id
    entry = task_index_pb2.TaskIndexEntry(
        name=f"organizations/{org}/taskIndexEntries/{row.task_id}",
        task=f"organizations/{org}/tasks/{row.task_id}",
        repository=row.repository,
        branch=row.branch,
        title=row.title,
        virtual=row.virtual,
    )
    if row.pull_request is not None:
        entry.pull_request.CopyFrom(pr_pb2.PullRequestSummary.FromString(row.pull_request))
    entry.create_time.CopyFrom(timestamp(row.create_time))
    entry.update_time.CopyFrom(timestamp(row.update_time))
    return entry


def audit_event(row: Any) -> audit_event_pb2.AuditEvent:
    event = audit_event_pb2.AuditEvent(
        name=f"organizations/{row.organization_id}/auditEvents/{row.id}",
        kind=row.kind,
        repository=row.repository,
        task=row.task,
        branch=row.branch,
        actor=row.actor,
    )
    payload = struct_pb2.Struct()
    payload.update(row.payload or {})
    event.payload.CopyFrom(payload)
    event.create_time.CopyFrom(timestamp(row.create_time))
    return event


def timestamp(value: dt.datetime | None) -> Timestamp:
    """An aware datetime as a proto Timestamp (None, like the epoch, gives the unset Timestamp)."""
    return to_timestamp(value) or Timestamp()


def to_time(ts: Timestamp) -> dt.datetime | None:
    """A proto Timestamp as an aware UTC datetime (whole microseconds); None when it is unset."""
    if not ts.seconds and not ts.nanos:
        return None
    return ts.ToDatetime(tzinfo=dt.UTC)
