"""Wiring of the organization service: `wire(runtime) -> Wiring` (see services.platform.server.host).

Queues consumed:
    <prefix>.organization.summary_events   bound to the task and github-data events the summary
                                           projection is built from (`projection.ROUTING_KEYS`)
    <prefix>.organization.audit            AppendAuditEvent work items from every service
    <prefix>.organization.connect_provider ConnectOrganization calls to github-data, written in the
                                           ConnectLocalOrganization and discovery transactions
    <prefix>.organization.github_discovery github-data's `github_data.user_accounts.changed` events:
                                           GitHub account discoveries, applied to organizations and
                                           memberships (`usecases.github_discovery`)
    <prefix>.organization.github_members   github-data's GitHub member events, applied to the member
                                           rows (`usecases.members`)

Every process also subscribes to `organization.member.*` (its own MemberChanged / MemberRemoved) so
that its membership cache drops a changed answer at once.
"""

from __future__ import annotations

from foundry.organization.v1 import organization_service_pb2_grpc as pb_grpc

from services.organization.api.servicer import OrganizationServicer
from services.organization.usecases.accounts import Accounts
from services.organization.usecases.audit import AuditLog
from services.organization.usecases.github_discovery import GithubDiscovery
from services.organization.usecases.members import GITHUB_MEMBER_KEYS, GithubMembers
from services.organization.usecases.model_credentials import ModelCredentials
from services.organization.usecases.organizations import Organizations, member_check
from services.organization.usecases.projection import ROUTING_KEYS
from services.organization.usecases.settings import SettingsWrites
from services.organization.usecases.summary import Summaries
from services.organization.usecases.task_index import TaskIndex
from services.organization.workers import (
    audit,
    connect_provider,
    github_discovery,
    github_members,
    summary_events,
)
from services.platform.authz import Membership
from services.platform.messaging.broker import QueueSpec, queue_name
from services.platform.server.host import Runtime, Servicer, Wiring

SERVICE = "organization"
FULL_NAME = "foundry.organization.v1.OrganizationService"


def queue(rt: Runtime, name: str) -> str:
    """Full name of one of this service's queues."""
    return queue_name(rt.settings.name_prefix, SERVICE, name)


def wire(rt: Runtime) -> Wiring:
    """Build the organization service on `rt`: use cases over its database, watch hub and outbox.

    Raises ValueError in production without a real `credentials_key` (it encrypts model API keys)."""
    rt.settings.require_credentials_key()
    membership = Membership(member_check(rt.db), ttl_seconds=5.0)
    connect_queue = queue(rt, "connect_provider")
    discovery = GithubDiscovery(rt.outbox, membership, connect_queue=connect_queue)
    servicer = OrganizationServicer(
        accounts=Accounts(rt.db, rt.hub, rt.settings),
        organizations=Organizations(
            rt.db,
            rt.outbox,
            membership,
            connect_queue=connect_queue,
            allowed_roots=rt.settings.allowed_local_roots(),
            protected_paths=rt.settings.protected_paths(),
        ),
        task_index=TaskIndex(rt.db, membership),
        summaries=Summaries(rt.db, rt.hub, membership),
        audit=AuditLog(rt.db, membership),
        settings=SettingsWrites(rt.db),
        model_credentials=ModelCredentials(
            rt.db,
            membership,
            variables=[v for names in rt.settings.sandbox.agent_credentials.values() for v in names],
            secret=rt.settings.credentials_key.get_secret_value(),
        ),
    )
    return Wiring(
        membership=membership,
        servicers=[Servicer(pb_grpc.add_OrganizationServiceServicer_to_server, servicer, FULL_NAME)],
        queues=[
            # Events of one entity may be applied out of order: versions decide, so a few run at once.
            (
                QueueSpec(name=queue(rt, "summary_events"), bindings=ROUTING_KEYS, prefetch=8),
                summary_events.handle,
            ),
            # Audit entries arrive as work (enqueued by name) or as `<service>.audit.appended` events.
            (QueueSpec(name=queue(rt, "audit"), bindings=("*.audit.appended",)), audit.handle),
            (QueueSpec(name=connect_queue), connect_provider.handler(rt.peers)),
            (
                QueueSpec(name=queue(rt, "github_members"), bindings=GITHUB_MEMBER_KEYS),
                github_members.handler(GithubMembers(rt.outbox)),
            ),
            # github-data reads GitHub; this service applies what it found (versions decide).
            (
                QueueSpec(name=queue(rt, "github_discovery"), bindings=github_discovery.ROUTING_KEYS),
                github_discovery.handler(discovery),
            ),
        ],
    )
