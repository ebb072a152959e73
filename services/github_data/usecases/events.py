"""Everything github_data puts on RabbitMQ, always through the outbox in the caller's transaction.

Events (topic exchange `<prefix>.events`):

    github_data.sync.progress              SyncProgress          every status change (phase, counters,
                                                                 label, state, webhook receipt)
    github_data.repository.changed         RepositoryChanged
    github_data.repository.removed         RepositoryRemoved
    github_data.pull_request.changed       PullRequestChanged
    github_data.pull_request.removed       PullRequestRemoved
    github_data.member.changed             GithubMemberChanged   (the organization service applies
    github_data.member.removed             GithubMemberRemoved    these to its member rows)
    github_data.task.archive_on_branch     foundry.task.v1.ArchiveTaskOnBranch   (the task service binds
                                                                 a queue to this key)
    github_data.user_accounts.changed      UserAccountsChanged   a user's account discovery was queued,
                                                                 started, done or failed (the
                                                                 organization service applies it)

Work queues (own service): `<prefix>.github_data.sync` (RunSync), `<prefix>.github_data.webhook`
(HandleWebhookDelivery), `<prefix>.github_data.user_accounts` (DiscoverUserAccounts).
"""

from __future__ import annotations

from foundry.github_data.v1 import events_pb2, pull_request_pb2
from foundry.task.v1 import events_pb2 as task_events_pb2
from sqlalchemy.ext.asyncio import AsyncSession

from services.github_data import convert
from services.github_data.domain import names
from services.github_data.domain.accounts import Discovery, UserAccounts
from services.github_data.domain.models import GithubMember, PullRequest, Repository, SyncStatus
from services.github_data.store import queries
from services.platform.messaging.broker import queue_name
from services.platform.outbox import Outbox

SYNC_PROGRESS = "github_data.sync.progress"
REPOSITORY_CHANGED = "github_data.repository.changed"
REPOSITORY_REMOVED = "github_data.repository.removed"
PULL_REQUEST_CHANGED = "github_data.pull_request.changed"
PULL_REQUEST_REMOVED = "github_data.pull_request.removed"
ARCHIVE_TASK_ON_BRANCH = "github_data.task.archive_on_branch"
MEMBER_CHANGED = "github_data.member.changed"
MEMBER_REMOVED = "github_data.member.removed"
USER_ACCOUNTS_CHANGED = "github_data.user_accounts.changed"


class Events:
    """Writes events and work items of one github_data process into the outbox.

    Args:
        outbox: the runtime's Outbox.
        prefix: `Settings.name_prefix` (work queue names).
    """

    def __init__(self, outbox: Outbox, prefix: str) -> None:
        self._outbox = outbox
        self.sync_queue = queue_name(prefix, "github_data", "sync")
        self.webhook_queue = queue_name(prefix, "github_data", "webhook")
        self.discovery_queue = queue_name(prefix, "github_data", "user_accounts")

    async def sync_progress(self, session: AsyncSession, org: str) -> SyncStatus:
        """Publish the organization's status as stored now (with counts); returns it."""
        status = await queries.get_status(session, org=org)
        assert status is not None, f"no sync status for {org}"
        await self._outbox.publish(
            session,
            routing_key=SYNC_PROGRESS,
            message=events_pb2.SyncProgress(
                name=names.sync_status_name(org),
                version=status.version,
                sync_status=convert.sync_status_to_pb(status),
            ),
        )
        return status

    async def repository_changed(self, session: AsyncSession, repo: Repository) -> None:
        await self._outbox.publish(
            session,
            routing_key=REPOSITORY_CHANGED,
            message=events_pb2.RepositoryChanged(
                name=names.repository_name(repo.organization, repo.repo_id),
                version=repo.version,
                repository=convert.repository_to_pb(repo),
            ),
        )

    async def repository_removed(self, session: AsyncSession, repo: Repository, version: int) -> None:
        await self._outbox.publish(
            session,
            routing_key=REPOSITORY_REMOVED,
            message=events_pb2.RepositoryRemoved(
                name=names.repository_name(repo.organization, repo.repo_id), version=version
            ),
        )

    async def pull_request_changed(self, session: AsyncSession, pr: PullRequest) -> None:
        full = convert.pull_request_to_pb(pr)
        await self._outbox.publish(
            session,
            routing_key=PULL_REQUEST_CHANGED,
            message=events_pb2.PullRequestChanged(
                name=full.name,
                version=pr.version,
                pull_request=full,
                summary=convert.pull_request_summary(full),
            ),
        )

    async def pull_request_removed(self, session: AsyncSession, pr: PullRequest, version: int) -> None:
        """`pr.state` is its final state (CLOSED/MERGED), or its last stored state when swept."""
        final = pr.state if pr.state in ("CLOSED", "MERGED") else ""
        await self._outbox.publish(
            session,
            routing_key=PULL_REQUEST_REMOVED,
            message=events_pb2.PullRequestRemoved(
                name=names.pull_request_name(pr.organization, pr.repo_id, pr.number),
                version=version,
                repository=names.repository_name(pr.organization, pr.repo_id),
                head_branch=pr.head_branch,
                final_state=convert.pr_state(final)
                if final
                else pull_request_pb2.PULL_REQUEST_STATE_UNSPECIFIED,
                pull_request=convert.pull_request_to_pb(pr),
            ),
        )

    async def member_changed(self, session: AsyncSession, member: GithubMember, version: int) -> None:
        await self._outbox.publish(
            session,
            routing_key=MEMBER_CHANGED,
            message=events_pb2.GithubMemberChanged(
                name=names.member_name(member.organization, member.member_id),
                version=version,
                github_member=convert.member_to_pb(member),
            ),
        )

    async def member_removed(self, session: AsyncSession, member: GithubMember, version: int) -> None:
        await self._outbox.publish(
            session,
            routing_key=MEMBER_REMOVED,
            message=events_pb2.GithubMemberRemoved(
                name=names.member_name(member.organization, member.member_id),
                version=version,
                login=member.login,
            ),
        )

    async def archive_task_on_branch(self, session: AsyncSession, pr: PullRequest, reason: str) -> None:
        """Ask the task service to archive the task owning `pr.head_branch` (if any)."""
        await self._outbox.publish(
            session,
            routing_key=ARCHIVE_TASK_ON_BRANCH,
            message=task_events_pb2.ArchiveTaskOnBranch(
                repository=names.repository_name(pr.organization, pr.repo_id),
                branch=pr.head_branch,
                pull_request=names.pull_request_name(pr.organization, pr.repo_id, pr.number),
                reason=reason,
            ),
        )

    async def enqueue_sync(self, session: AsyncSession, org: str, generation: int) -> None:
        await self._outbox.enqueue(
            session,
            queue=self.sync_queue,
            message=events_pb2.RunSync(name=names.sync_status_name(org), generation=generation),
        )

    async def enqueue_webhook(self, session: AsyncSession, delivery_id: str) -> None:
        await self._outbox.enqueue(
            session,
            queue=self.webhook_queue,
            message=events_pb2.HandleWebhookDelivery(name=names.delivery_name(delivery_id)),
        )

    async def user_accounts_changed(
        self, session: AsyncSession, discovery: Discovery, accounts: UserAccounts | None = None
    ) -> None:
        """The user's discovery as stored now; `accounts` with a `done` one."""
        await self._outbox.publish(
            session,
            routing_key=USER_ACCOUNTS_CHANGED,
            message=convert.user_accounts_changed(discovery, accounts),
        )

    async def enqueue_discovery(self, session: AsyncSession, user_id: str) -> None:
        await self._outbox.enqueue(
            session,
            queue=self.discovery_queue,
            message=events_pb2.DiscoverUserAccounts(user=names.user_name(user_id)),
        )
