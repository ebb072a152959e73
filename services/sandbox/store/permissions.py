"""Permission requests asked of the user: each written with its transcript event in one transaction.

A request is inserted PENDING together with its PERMISSION_REQUEST event, and leaves PENDING (to
ANSWERED or CANCELLED) together with its PERMISSION_RESPONSE event, by a conditional update: of two
answers racing, exactly one wins and only it is logged.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, select, update

from services.platform import clock
from services.platform.db import Database
from services.platform.outbox import Outbox
from services.sandbox.domain import models as m
from services.sandbox.domain import permissions as p
from services.sandbox.store.queries import append_events
from services.sandbox.store.tables import permission_requests


def _where(key: m.SessionKey, request_id: str | None = None) -> Any:
    clause = and_(
        permission_requests.c.organization == key.sandbox.organization,
        permission_requests.c.sandbox_id == key.sandbox.sandbox_id,
        permission_requests.c.session_id == key.session_id,
    )
    return clause if request_id is None else and_(clause, permission_requests.c.request_id == request_id)


def _request(r: Any) -> p.PermissionRequest:
    return p.PermissionRequest(
        session=m.SessionKey(m.SandboxKey(r.organization, r.sandbox_id), r.session_id),
        request_id=r.request_id,
        turn_id=r.turn_id,
        title=r.title,
        tool_call=dict(r.tool_call or {}),
        options=list(r.options or []),
        state=p.PermissionState(r.state),
        outcome=p.PermissionOutcome(r.outcome) if r.outcome else None,
        option_id=r.option_id,
        answered_by=r.answered_by,
        delivered=bool(r.delivered),
        create_time=r.create_time,
        answer_time=r.answer_time,
    )


class PermissionRecords:
    """The `permission_requests` table and the transcript events that go with its changes."""

    def __init__(self, db: Database, outbox: Outbox) -> None:
        self.db = db
        self.outbox = outbox

    async def open(self, key: m.SessionKey, turn_id: str, request_id: str, params: dict[str, Any]) -> None:
        """Record a PENDING request (ACP `session/request_permission` params as received) and its
        PERMISSION_REQUEST event, in one transaction."""
        async with self.db.transaction() as s:
            await s.execute(
                permission_requests.insert().values(
                    organization=key.sandbox.organization,
                    sandbox_id=key.sandbox.sandbox_id,
                    session_id=key.session_id,
                    request_id=request_id,
                    turn_id=turn_id,
                    title=p.request_title(params),
                    tool_call=params.get("toolCall") or {},
                    options=params.get("options") or [],
                    state=p.PermissionState.PENDING.value,
                    create_time=clock.now(),
                )
            )
            await append_events(s, self.outbox, key, turn_id, [p.request_event(request_id, params)])

    async def get(self, key: m.SessionKey, request_id: str) -> p.PermissionRequest | None:
        async with self.db.snapshot() as s:
            row = (await s.execute(select(permission_requests).where(_where(key, request_id)))).first()
        return _request(row) if row else None

    async def pending(self, key: m.SessionKey, turn_id: str | None = None) -> list[p.PermissionRequest]:
        """The session's PENDING requests (of one turn, when given), oldest first."""
        query = select(permission_requests).where(
            _where(key), permission_requests.c.state == p.PermissionState.PENDING.value
        )
        if turn_id is not None:
            query = query.where(permission_requests.c.turn_id == turn_id)
        async with self.db.snapshot() as s:
            result = await s.execute(query.order_by(permission_requests.c.create_time))
            return [_request(r) for r in result.all()]

    async def answer(
        self,
        request: p.PermissionRequest,
        *,
        outcome: p.PermissionOutcome,
        option_id: str,
        user: str,
        delivered: bool,
    ) -> p.PermissionRequest | None:
        """Move a PENDING request to ANSWERED (CANCELLED for outcome CANCELLED) and log its
        PERMISSION_RESPONSE, in one transaction. Returns the request after, or None when it was no
        longer PENDING (another answer won; nothing written)."""
        key = request.session
        state = (
            p.PermissionState.CANCELLED
            if outcome is p.PermissionOutcome.CANCELLED
            else p.PermissionState.ANSWERED
        )
        async with self.db.transaction() as s:
            changed = await s.execute(
                update(permission_requests)
                .where(
                    _where(key, request.request_id),
                    permission_requests.c.state == p.PermissionState.PENDING.value,
                )
                .values(
                    state=state.value,
                    outcome=outcome.value,
                    option_id=option_id,
                    answered_by=user,
                    delivered=delivered,
                    answer_time=clock.now(),
                )
            )
            if not changed.rowcount:  # type: ignore[attr-defined]
                return None
            event = p.response_event(request, outcome, option_id, user, delivered)
            await append_events(s, self.outbox, key, request.turn_id, [event])
            row = (await s.execute(select(permission_requests).where(_where(key, request.request_id)))).one()
        return _request(row)
