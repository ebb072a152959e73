"""GitHub webhook deliveries: store (deduplicated by delivery id) and enqueue; then handle in the
background (work item HandleWebhookDelivery).

The gateway verified `X-Hub-Signature-256` (`services.platform.webhook_signature`) before calling
RecordWebhookDelivery. Handling, per organization whose GitHub account the payload names
(installation.account → repository.owner → organization):

    installation created / unsuspend       installation connected, full sync queued
    installation deleted / suspend         state cleared, install_required / reconnect_required
    installation_repositories              full sync queued
    pull_request (any action)              repository + pull request upserted; closed or merged:
                                           the open row is removed, PullRequestRemoved and
                                           ArchiveTaskOnBranch are published
    organization member_added              member upserted (role and state from `membership`),
                                           GithubMemberChanged when it changed
    organization member_removed            member deleted, GithubMemberRemoved (the organization
                                           service ends the user's membership at once)
    anything else                          recorded as ignored and logged

Every handled delivery records `last_webhook_time` and `<event>.<action>` on the sync status and
publishes SyncProgress. The effect and the delivery's final state commit in one transaction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.github_data.domain.models import (
    Connection,
    DeliveryState,
    GithubMember,
    InstallationStatus,
    WebhookDelivery,
)
from services.github_data.domain.names import DOMAIN
from services.github_data.domain.normalize import (
    remote_pull_request,
    remote_repository,
    webhook_account_login,
)
from services.github_data.store import queries
from services.github_data.usecases.connections import clear_state, enqueue_sync
from services.github_data.usecases.deps import Deps
from services.github_data.usecases.upserts import (
    pull_request_of,
    remove_member,
    upsert_member,
    upsert_pull_request,
    upsert_repository,
)
from services.platform.errors import InvalidArgument
from services.platform.logging import get_logger

log = get_logger(__name__)
_DELIVERY_ID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")
_EVENT = re.compile(r"^[a-z_]{1,100}$")
Transaction = Callable[[], AbstractAsyncContextManager[AsyncSession]]


def _invalid(field: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {message}", domain=DOMAIN, field_violations={field: message})


async def record_delivery(
    deps: Deps, *, delivery_id: str, event: str, payload: bytes, receive_time: datetime | None
) -> tuple[WebhookDelivery, bool]:
    """Store a verified delivery and enqueue its handling; returns (delivery, duplicate).

    A delivery id seen before returns the stored delivery with duplicate=True and enqueues nothing.
    Raises InvalidArgument for a malformed id or event, or a payload that is not a JSON object.
    """
    if not _DELIVERY_ID.match(delivery_id):
        raise _invalid("delivery_id", "must be the X-GitHub-Delivery id (1-100 characters)")
    if not _EVENT.match(event):
        raise _invalid("event", "must be the X-GitHub-Event name")
    try:
        body = json.loads(payload)
    except ValueError as exc:
        raise _invalid("payload", "is not JSON") from exc
    if not isinstance(body, dict):
        raise _invalid("payload", "is not a JSON object")
    action = body.get("action")
    delivery = WebhookDelivery(
        delivery_id=delivery_id,
        event=event,
        action=action if isinstance(action, str) else "",
        payload=bytes(payload),
        state="queued",
        receive_time=receive_time or deps.now(),
    )
    try:
        async with deps.db.transaction() as session:
            existing = await queries.get_delivery(session, delivery_id=delivery_id)
            if existing is not None:
                return existing, True
            await queries.insert_delivery(session, delivery=delivery)
            await deps.events.enqueue_webhook(session, delivery_id)
    except IntegrityError:  # the same id recorded concurrently by another replica
        async with deps.db.snapshot() as session:
            found = await queries.get_delivery(session, delivery_id=delivery_id)
        assert found is not None
        return found, True
    log.info("webhook_recorded", delivery_id=delivery_id, event_action=delivery.event_action)
    return delivery, False


async def handle_delivery(deps: Deps, delivery_id: str, transaction: Transaction) -> None:
    """Apply a stored delivery once; `transaction` is the handler context's inbox-deduplicating one."""
    async with transaction() as session:
        delivery = await queries.get_delivery(session, delivery_id=delivery_id)
        if delivery is None or delivery.state != "queued":
            log.info("webhook_already_handled", delivery_id=delivery_id)
            return
        payload: dict[str, Any] = json.loads(delivery.payload)
        login = webhook_account_login(payload)
        targets = await queries.connections_for_account(session, login=login) if login else []
        if not targets:
            detail = (
                f"no organization is connected to GitHub account {login!r}"
                if login
                else "no account in payload"
            )
            await _finish(session, deps, delivery, "ignored", "", detail)
            return
        state: DeliveryState = "ignored"
        detail = ""
        for conn in targets:
            await queries.update_status(
                session,
                org=conn.organization,
                values={
                    "last_webhook_time": delivery.receive_time,
                    "last_webhook_event": delivery.event_action,
                    "update_time": deps.now(),
                },
            )
            state, detail = await _apply(session, deps, conn, delivery, payload)
            await deps.events.sync_progress(session, conn.organization)
        await _finish(session, deps, delivery, state, targets[0].organization, detail)


async def _finish(
    session: AsyncSession, deps: Deps, delivery: WebhookDelivery, state: DeliveryState, org: str, detail: str
) -> None:
    await queries.finish_delivery(
        session,
        delivery_id=delivery.delivery_id,
        state=state,
        organization=org,
        detail=detail,
        now=deps.now(),
    )
    event = "webhook_ignored" if state == "ignored" else "webhook_handled"
    log.info(
        event,
        delivery_id=delivery.delivery_id,
        event_action=delivery.event_action,
        organization=org,
        detail=detail,
    )


async def _apply(
    session: AsyncSession, deps: Deps, conn: Connection, delivery: WebhookDelivery, payload: dict[str, Any]
) -> tuple[DeliveryState, str]:
    org, event, action = conn.organization, delivery.event, delivery.action
    if event == "installation":
        installation_id = int((payload.get("installation") or {}).get("id") or 0)
        if action in ("created", "unsuspend"):
            await queries.set_installation(
                session, org=org, status="connected", installation_id=installation_id, now=deps.now()
            )
            await enqueue_sync(session, deps, org, f"installation {action}")
            return "handled", ""
        if action in ("deleted", "suspend"):
            status: InstallationStatus = "install_required" if action == "deleted" else "reconnect_required"
            reason = "GitHub App uninstalled" if action == "deleted" else "GitHub App installation suspended"
            await clear_state(session, deps, org, status, reason)
            return "handled", ""
        return "ignored", f"installation.{action} needs no action"
    if event == "installation_repositories":
        await enqueue_sync(session, deps, org, f"repositories {action}")
        return "handled", ""
    if event == "pull_request":
        await _pull_request(session, deps, org, payload)
        return "handled", ""
    if event == "organization" and action in ("member_added", "member_removed"):
        return await _organization_member(session, deps, org, action, payload)
    return "ignored", f"{delivery.event_action} is not handled"


async def _organization_member(
    session: AsyncSession, deps: Deps, org: str, action: str, payload: dict[str, Any]
) -> tuple[DeliveryState, str]:
    membership = payload.get("membership") or {}
    user = membership.get("user") or {}
    if not isinstance(user, dict) or not user.get("id"):
        return "ignored", f"organization.{action} without membership.user"
    member_id = str(int(user["id"]))
    if action == "member_removed":
        removed = await remove_member(session, deps.events, org=org, member_id=member_id)
        return "handled", "" if removed else f"member {member_id} was not stored"
    status = await queries.get_status(session, org=org, with_counts=False)
    assert status is not None
    role = str(membership.get("role") or "member")
    await upsert_member(
        session,
        deps.events,
        now=deps.now(),
        keep_profile=True,
        member=GithubMember(
            organization=org,
            member_id=member_id,
            login=str(user.get("login") or ""),
            avatar_url=str(user.get("avatar_url") or ""),
            role="admin" if role == "admin" else "member",
            state=str(membership.get("state") or "active"),
            sync_generation=status.generation,
        ),
    )
    return "handled", ""


async def _pull_request(session: AsyncSession, deps: Deps, org: str, payload: dict[str, Any]) -> None:
    status = await queries.get_status(session, org=org, with_counts=False)
    assert status is not None
    now = deps.now()
    remote = remote_pull_request(payload["pull_request"])
    repo = await upsert_repository(
        session,
        deps.events,
        org=org,
        remote=remote_repository(payload["repository"]),
        generation=status.generation,
        now=now,
        fallback_branch=remote.base_branch,
    )
    if remote.state in ("OPEN", "DRAFT"):
        await upsert_pull_request(
            session, deps.events, org=org, repo=repo, remote=remote, generation=status.generation, now=now
        )
        return
    await queries.delete_pull_request(session, org=org, repo_id=repo.repo_id, number=remote.number)
    final = pull_request_of(org, repo, remote, status.generation)
    await deps.events.pull_request_removed(session, final, await queries.bump_seq(session, org=org))
    reason = "PR merged" if remote.state == "MERGED" else "PR closed"
    await deps.events.archive_task_on_branch(session, final, reason)
