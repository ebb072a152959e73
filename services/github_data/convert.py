"""Domain records ↔ `foundry.github_data.v1` messages (and the events built from them)."""

from __future__ import annotations

from datetime import UTC, datetime

from foundry.github_data.v1 import (
    connection_pb2,
    events_pb2,
    github_member_pb2,
    pull_request_pb2,
    repository_pb2,
)
from foundry.github_data.v1 import sync_status_pb2 as ss_pb2
from foundry.github_data.v1 import webhook_delivery_pb2 as wd_pb2
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from services.github_data.domain import names
from services.github_data.domain.accounts import Discovery, GithubAccount, UserAccounts
from services.github_data.domain.models import (
    Connection,
    GithubMember,
    InstallationStatus,
    PullRequest,
    PullRequestState,
    Repository,
    SyncStatus,
    WebhookDelivery,
)
from services.platform.errors import InvalidArgument
from services.platform.timestamps import to_timestamp

_STATES = {
    "pending": ss_pb2.SYNC_STATE_PENDING,
    "syncing": ss_pb2.SYNC_STATE_SYNCING,
    "synced": ss_pb2.SYNC_STATE_SYNCED,
    "error": ss_pb2.SYNC_STATE_ERROR,
}
_PHASES = {
    "discovering_repositories": ss_pb2.SYNC_PHASE_DISCOVERING_REPOSITORIES,
    "syncing_repositories": ss_pb2.SYNC_PHASE_SYNCING_REPOSITORIES,
    "syncing_members": ss_pb2.SYNC_PHASE_SYNCING_MEMBERS,
    "syncing_pull_requests": ss_pb2.SYNC_PHASE_SYNCING_PULL_REQUESTS,
}
_PROVIDERS = {"local": ss_pb2.PROVIDER_LOCAL, "github": ss_pb2.PROVIDER_GITHUB}
_INSTALL = {
    "connected": ss_pb2.INSTALLATION_STATUS_CONNECTED,
    "install_required": ss_pb2.INSTALLATION_STATUS_INSTALL_REQUIRED,
    "reconnect_required": ss_pb2.INSTALLATION_STATUS_RECONNECT_REQUIRED,
}
_INSTALL_BACK: dict[int, InstallationStatus] = {v: k for k, v in _INSTALL.items()}  # type: ignore[misc]
_PR_STATES = {
    "OPEN": pull_request_pb2.PULL_REQUEST_STATE_OPEN,
    "DRAFT": pull_request_pb2.PULL_REQUEST_STATE_DRAFT,
    "CLOSED": pull_request_pb2.PULL_REQUEST_STATE_CLOSED,
    "MERGED": pull_request_pb2.PULL_REQUEST_STATE_MERGED,
}
_ACCOUNT = {
    "user": connection_pb2.GITHUB_ACCOUNT_TYPE_USER,
    "organization": connection_pb2.GITHUB_ACCOUNT_TYPE_ORGANIZATION,
}
_DELIVERY = {
    "queued": wd_pb2.WEBHOOK_DELIVERY_STATE_QUEUED,
    "handled": wd_pb2.WEBHOOK_DELIVERY_STATE_HANDLED,
    "ignored": wd_pb2.WEBHOOK_DELIVERY_STATE_IGNORED,
    "failed": wd_pb2.WEBHOOK_DELIVERY_STATE_FAILED,
}


ts = to_timestamp  # an aware UTC datetime (as every store returns) → Timestamp; None stays unset


def from_ts(value: Timestamp, present: bool) -> datetime | None:
    return value.ToDatetime(tzinfo=UTC) if present else None


def pr_state(state: PullRequestState) -> pull_request_pb2.PullRequestState.ValueType:
    return _PR_STATES.get(state, pull_request_pb2.PULL_REQUEST_STATE_UNSPECIFIED)


def installation_status(value: int) -> InstallationStatus:
    """Proto enum → stored string; raises InvalidArgument for UNSPECIFIED/unknown."""
    if value not in _INSTALL_BACK:
        raise InvalidArgument(
            "installation_status: must be set",
            reason="INVALID_ARGUMENT",
            domain=names.DOMAIN,
            field_violations={"installation_status": "must be set"},
        )
    return _INSTALL_BACK[value]


def connection_to_pb(c: Connection) -> connection_pb2.Connection:
    msg = connection_pb2.Connection(
        name=names.connection_name(c.organization),
        provider=_PROVIDERS[c.provider],
        installation_status=_INSTALL.get(c.installation_status, ss_pb2.INSTALLATION_STATUS_UNSPECIFIED),
        create_time=ts(c.create_time),
        update_time=ts(c.update_time),
    )
    if c.provider == "local":
        msg.local.root_path = c.root_path
    else:
        msg.github.CopyFrom(
            connection_pb2.GithubSettings(
                account_login=c.account_login,
                account_id=c.account_id,
                account_type=_ACCOUNT.get(c.account_type, connection_pb2.GITHUB_ACCOUNT_TYPE_UNSPECIFIED),
                installation_id=c.installation_id,
                token_user=c.token_user,
            )
        )
    return msg


def connection_from_pb(msg: connection_pb2.Connection) -> Connection:
    """Validates and converts the request's connection. Raises InvalidArgument."""
    org = names.parse_suffixed(msg.name, "connection", "connection.name")
    if msg.provider == ss_pb2.PROVIDER_LOCAL:
        root = msg.local.root_path
        _require(bool(root), "connection.local.root_path", "must be set for a local organization")
        return Connection(organization=org, provider="local", root_path=root, installation_status="connected")
    _require(
        msg.provider == ss_pb2.PROVIDER_GITHUB,
        "connection.provider",
        "must be PROVIDER_LOCAL or PROVIDER_GITHUB",
    )
    gh = msg.github
    _require(
        bool(gh.account_login), "connection.github.account_login", "must be set for a github organization"
    )
    _require(
        gh.installation_id > 0 or bool(gh.token_user),
        "connection.github",
        "needs an installation_id or a token_user",
    )
    if gh.token_user:
        names.parse_user(gh.token_user, "connection.github.token_user")
    account = {connection_pb2.GITHUB_ACCOUNT_TYPE_USER: "user"}.get(gh.account_type, "organization")
    return Connection(
        organization=org,
        provider="github",
        account_login=gh.account_login,
        account_id=gh.account_id,
        account_type=account,  # type: ignore[arg-type]
        installation_id=gh.installation_id,
        token_user=gh.token_user,
        installation_status="connected" if gh.installation_id or gh.token_user else "install_required",
    )


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise InvalidArgument(f"{field}: {message}", domain=names.DOMAIN, field_violations={field: message})


def sync_status_to_pb(s: SyncStatus) -> ss_pb2.SyncStatus:
    return ss_pb2.SyncStatus(
        name=names.sync_status_name(s.organization),
        state=_STATES[s.state],
        phase=_PHASES.get(s.phase or "", ss_pb2.SYNC_PHASE_UNSPECIFIED),
        label=s.label,
        processed_repository_count=s.processed,
        total_repository_count=s.total,
        repository_count=s.repository_count,
        open_pull_request_count=s.open_pull_request_count,
        generation=s.generation,
        last_sync_time=ts(s.last_sync_time),
        last_webhook_time=ts(s.last_webhook_time),
        last_webhook_event=s.last_webhook_event,
        error_message=s.error_message,
        provider=_PROVIDERS.get(s.provider or "", ss_pb2.PROVIDER_UNSPECIFIED),
        installation_status=_INSTALL.get(s.installation_status, ss_pb2.INSTALLATION_STATUS_UNSPECIFIED),
        connected_account=s.connected_account,
        update_time=ts(s.update_time),
    )


def freshness(s: SyncStatus | None) -> ss_pb2.Freshness:
    """Freshness of a read; empty (state UNSPECIFIED) for a never-connected organization."""
    if s is None:
        return ss_pb2.Freshness()
    return ss_pb2.Freshness(
        state=_STATES[s.state],
        phase=_PHASES.get(s.phase or "", ss_pb2.SYNC_PHASE_UNSPECIFIED),
        generation=s.generation,
        last_sync_time=ts(s.last_sync_time),
        last_webhook_time=ts(s.last_webhook_time),
    )


def repository_to_pb(r: Repository) -> repository_pb2.Repository:
    return repository_pb2.Repository(
        name=names.repository_name(r.organization, r.repo_id),
        full_name=r.full_name,
        clone_url=r.clone_url,
        html_url=r.html_url,
        private=r.private,
        default_branch=r.default_branch,
        description=r.description,
        sync_generation=r.sync_generation,
        provider_update_time=ts(r.provider_update_time),
        create_time=ts(r.create_time),
        update_time=ts(r.update_time),
    )


def pull_request_to_pb(p: PullRequest) -> pull_request_pb2.PullRequest:
    return pull_request_pb2.PullRequest(
        name=names.pull_request_name(p.organization, p.repo_id, p.number),
        number=p.number,
        repository=names.repository_name(p.organization, p.repo_id),
        repository_full_name=p.repository_full_name,
        title=p.title,
        body=p.body,
        state=pr_state(p.state),
        draft=p.draft,
        url=p.url,
        head_branch=p.head_branch,
        base_branch=p.base_branch,
        author_login=p.author_login,
        create_time=ts(p.create_time),
        update_time=ts(p.provider_update_time),
        merge_time=ts(p.merge_time),
        close_time=ts(p.close_time),
        sync_generation=p.sync_generation,
    )


def pull_request_summary(pr: pull_request_pb2.PullRequest) -> pull_request_pb2.PullRequestSummary:
    """The small copy of `pr` that tasks and list screens keep: every PullRequestSummary field,
    copied from the PullRequest field of the same name (the summary is that subset by design).
    github_data is its one owner: events and responses carry it, so consumers never derive it."""
    summary = pull_request_pb2.PullRequestSummary()
    source: Message = pr  # looked up by field name, not by the generated attributes
    for field in summary.DESCRIPTOR.fields:
        if field.message_type is None:
            setattr(summary, field.name, getattr(pr, field.name))
        elif source.HasField(field.name):
            getattr(summary, field.name).CopyFrom(getattr(pr, field.name))
    return summary


def member_to_pb(m: GithubMember) -> github_member_pb2.GithubMember:
    return github_member_pb2.GithubMember(
        name=names.member_name(m.organization, m.member_id),
        login=m.login,
        display_name=m.display_name,
        email=m.email,
        avatar_url=m.avatar_url,
        role=m.role,
        state=m.state,
        sync_generation=m.sync_generation,
        update_time=ts(m.update_time),
    )


def delivery_to_pb(d: WebhookDelivery) -> wd_pb2.WebhookDelivery:
    return wd_pb2.WebhookDelivery(
        name=names.delivery_name(d.delivery_id),
        event=d.event,
        action=d.action,
        payload=d.payload,
        organization=names.organization_name(d.organization) if d.organization else "",
        state=_DELIVERY[d.state],
        detail=d.detail,
        receive_time=ts(d.receive_time),
        handle_time=ts(d.handle_time),
    )


_DISCOVERY = {
    "pending": events_pb2.USER_ACCOUNTS_STATE_PENDING,
    "running": events_pb2.USER_ACCOUNTS_STATE_RUNNING,
    "done": events_pb2.USER_ACCOUNTS_STATE_DONE,
    "error": events_pb2.USER_ACCOUNTS_STATE_ERROR,
}


def github_account_to_pb(a: GithubAccount) -> events_pb2.GithubAccount:
    return events_pb2.GithubAccount(
        login=a.login, account_id=a.account_id, display_name=a.name, avatar_url=a.avatar_url
    )


def user_accounts_changed(d: Discovery, accounts: UserAccounts | None) -> events_pb2.UserAccountsChanged:
    """The event of a user's discovery (with what it found when `accounts` is given)."""
    out = events_pb2.UserAccountsChanged(
        user=names.user_name(d.user_id),
        version=d.version,
        state=_DISCOVERY[d.state],
        error_message=d.error_message,
        update_time=ts(d.update_time),
        last_success_time=ts(d.last_success_time),
    )
    if accounts is not None:
        out.viewer.CopyFrom(github_account_to_pb(accounts.viewer))
        out.organizations.extend(github_account_to_pb(o) for o in accounts.organizations)
        out.installations_listed = accounts.installations is not None
        out.installations.extend(
            events_pb2.GithubAppInstallation(
                installation_id=i.installation_id, account_login=i.account_login, account_id=i.account_id
            )
            for i in accounts.installations or []
        )
    return out
