"""Answering permission requests asked of the user (policy ASK)."""

from __future__ import annotations

from services.platform.logging import get_logger
from services.sandbox.domain.errors import not_found, precondition, require
from services.sandbox.domain.models import SessionKey
from services.sandbox.domain.permissions import ANSWERS, PermissionOutcome, PermissionRequest, choose_option
from services.sandbox.domain.ports import Agents, PermissionLog

log = get_logger(__name__)


class Permissions:
    """Use cases on permission requests.

    Args:
        records: the permission requests and their transcript events.
        agents: agent processes of this service process (where the asking agent waits).
    """

    def __init__(self, records: PermissionLog, agents: Agents) -> None:
        self.records = records
        self.agents = agents

    async def answer(
        self, key: SessionKey, request_id: str, outcome: PermissionOutcome | None, *, user: str
    ) -> PermissionRequest:
        """Record the answer (the request ANSWERED, a PERMISSION_RESPONSE event), then hand it to
        the agent waiting for it. A request whose agent no longer waits (its turn ended when the
        service restarted) is answered too, `delivered` False.

        Raises InvalidArgument (`outcome` not ALLOW_ONCE, ALLOW_ALWAYS or REJECT; `user` malformed),
        NotFound (unknown request), FailedPrecondition `PERMISSION_ALREADY_ANSWERED`; nothing changes
        on an error."""
        require(outcome in ANSWERS, "outcome", "must be ALLOW_ONCE, ALLOW_ALWAYS or REJECT")
        require(not user or user.startswith("users/"), "user", "must look like users/{user}")
        assert outcome is not None
        request = await self.records.get(key, request_id)
        if request is None:
            raise not_found("permission request", f"{key.name}/permissionRequests/{request_id}")
        option_id = choose_option(outcome, request.options)
        delivered = self.agents.waiting(key, request_id)
        answered = await self.records.answer(
            request, outcome=outcome, option_id=option_id, user=user, delivered=delivered
        )
        if answered is None:
            current = await self.records.get(key, request_id) or request
            raise precondition(
                f"permission request {request.name} was already answered ({current.state.value})",
                "PERMISSION_ALREADY_ANSWERED",
            )
        if delivered and not self.agents.answer_permission(key, request_id, option_id):
            log.warning("permission_answer_not_delivered", request=request.name)  # its agent just ended
        log.info("permission_answered", request=request.name, outcome=outcome.value, delivered=delivered)
        return answered
