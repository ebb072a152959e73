"""AnswerPermissionRequest: a member answers a permission request the session's agent asked (the
organization's permission policy ASK).

The request and its answer are the sandbox service's (the session's event log and its
`permission_requests`); this use case authorizes the caller as SendMessage does, makes one short
call to the sandbox service (which records the answer and hands it to the waiting agent), and, when
an allow could no longer reach the agent that asked (its turn was cut off by a sandbox-service
restart, or its agent process died), sends the session a message saying the permission was granted,
queued like any message.
"""

from __future__ import annotations

from foundry.sandbox.v1 import agent_session_pb2 as sb_session_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as sb_pb2

from services.platform.errors import FoundryError, NotFound
from services.platform.logging import get_logger
from services.task.domain import names
from services.task.domain.errors import DOMAIN, SessionNotFound, require
from services.task.domain.models import Session
from services.task.store import queries
from services.task.usecases.deps import Deps
from services.task.usecases.sessions import send_message
from services.task.usecases.tasks import caller_user_id

log = get_logger(__name__)
ANSWERS = (
    sb_session_pb2.PERMISSION_OUTCOME_ALLOW_ONCE,
    sb_session_pb2.PERMISSION_OUTCOME_ALLOW_ALWAYS,
    sb_session_pb2.PERMISSION_OUTCOME_REJECT,
)
ALLOWS = ANSWERS[:2]


def granted_text(title: str, outcome: int) -> str:
    """The message an allow becomes when its agent no longer waits for it."""
    how = "always" if outcome == sb_session_pb2.PERMISSION_OUTCOME_ALLOW_ALWAYS else "once"
    return (
        f"Permission granted ({how}) for: {title}. Your earlier request was cut off when your "
        "agent process stopped (a sandbox-service restart, or the agent exited); go ahead with it now."
    )


async def answer_permission_request(
    deps: Deps, name: str, outcome: int
) -> tuple[sb_session_pb2.PermissionRequest, Session, str]:
    """Answer the request `name` (`.../sessions/{session}/permissionRequests/{request}`) with
    ALLOW_ONCE, ALLOW_ALWAYS or REJECT. Returns (the request as the sandbox recorded it, the session,
    the follow-up message's name or "").

    Errors: InvalidArgument (name, outcome), PermissionDenied (not a member), NotFound (session, or
    request: unknown, or the session has no agent session yet), FailedPrecondition
    `PERMISSION_ALREADY_ANSWERED`, Unavailable (sandbox service down; nothing recorded)."""
    org, task_id, session_id, request_id = names.permission_request(name)
    require(outcome in ANSWERS, "outcome", "must be ALLOW_ONCE, ALLOW_ALWAYS or REJECT")
    await deps.membership.require(f"organizations/{org}")
    user_id = caller_user_id()
    session_name = name.rsplit("/permissionRequests/", 1)[0]
    async with deps.db.snapshot() as s:
        row = await queries.get_session(s, task_id=task_id, session_id=session_id)
    if row is None:
        raise SessionNotFound(session_name)
    if not row.sandbox_session:
        raise NotFound(
            f"permission request {name} does not exist", reason="PERMISSION_REQUEST_NOT_FOUND", domain=DOMAIN
        )
    response = await deps.sandbox.answer_permission_request(
        sb_pb2.AnswerPermissionRequestRequest(
            name=f"{row.sandbox_session}/permissionRequests/{request_id}",
            outcome=outcome,  # type: ignore[arg-type]
            user=f"users/{user_id}" if user_id else "",
        )
    )
    answered = response.permission_request
    message = ""
    if outcome in ALLOWS and not answered.delivered:
        try:
            row, queued = await send_message(
                deps,
                name=session_name,
                text=granted_text(answered.title, outcome),
                attachments=[],
                request_id=f"permission-{request_id}",
            )
            message = f"{row.name}/messages/{queued.id}"
        except FoundryError as exc:  # the answer stands; the session takes no message now (closed…)
            log.warning("permission_follow_up_not_sent", request=name, error=exc.message)
    log.info("permission_request_answered", request=name, outcome=outcome, delivered=answered.delivered)
    return answered, row, message
