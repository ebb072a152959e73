"""Read the organization summary projection: only this service's tables, one query per list.

The stored rows hold the serialized messages, so `read_summary` splices them into the response as
length-delimited fields without decoding them (cost linear in the summary's size).
"""

from __future__ import annotations

from foundry.github_data.v1 import pull_request_pb2 as pr_pb2
from foundry.github_data.v1 import sync_status_pb2
from foundry.organization.v1 import organization_summary_pb2 as summary_pb2
from foundry.task.v1 import task_pb2
from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncSession

from services.organization.domain.names import sync_status_name
from services.organization.store import projection as q
from services.organization.usecases.projection.apply import repository_summary

# Field numbers of OrganizationSummary (organization_summary.proto).
_SYNC_STATUS, _REPOSITORIES, _TASK_SUMMARIES, _OPEN_PULL_REQUESTS = 2, 3, 4, 5


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


async def read_summary(session: AsyncSession, *, org_id: str) -> summary_pb2.OrganizationSummary:
    """The OrganizationSummary of `org_id` as `session` sees it (empty lists for an unknown org).

    Lists are ordered as the proto documents: repositories by latest activity, task summaries and
    open pull requests by update time, newest first.
    """
    parts: list[bytes] = []
    status = await q.get_sync_status(session, org_id=org_id)
    if status is not None:
        parts.append(_field(_SYNC_STATUS, status))
    for row in await q.list_repositories(session, org_id=org_id):
        parts.append(_field(_REPOSITORIES, repository_summary(row).SerializeToString()))
    parts.extend(
        _field(_TASK_SUMMARIES, blob) for blob in await q.list_task_summaries(session, org_id=org_id)
    )
    parts.extend(
        _field(_OPEN_PULL_REQUESTS, blob) for blob in await q.list_open_pull_requests(session, org_id=org_id)
    )
    summary = summary_pb2.OrganizationSummary(name=f"organizations/{org_id}/summary")
    summary.MergeFromString(b"".join(parts))
    return summary


async def summary_items(session: AsyncSession, *, org_id: str) -> list[tuple[str, Message]]:
    """The summary as Watch snapshot items: SyncStatus, RepositorySummary, TaskSummary and
    PullRequestSummary messages keyed by their resource names."""
    items: list[tuple[str, Message]] = []
    status = await q.get_sync_status(session, org_id=org_id)
    if status is not None:
        items.append((sync_status_name(org_id), sync_status_pb2.SyncStatus.FromString(status)))
    for row in await q.list_repositories(session, org_id=org_id):
        items.append((row.name, repository_summary(row)))
    for blob in await q.list_task_summaries(session, org_id=org_id):
        task = task_pb2.TaskSummary.FromString(blob)
        items.append((task.name, task))
    for blob in await q.list_open_pull_requests(session, org_id=org_id):
        pr = pr_pb2.PullRequestSummary.FromString(blob)
        items.append((pr.name, pr))
    return items
