"""Permission requests asked of the user (policy ASK): their states, answers, and the rules that turn
an answer into the agent's option.

An agent's ACP `session/request_permission` offers options, each with a `kind` (`allow_once`,
`allow_always`, `reject_once`, `reject_always`). Under policy ASK the request is recorded PENDING and
the agent waits; a user answers ALLOW_ONCE, ALLOW_ALWAYS or REJECT, which picks one of those options
(`choose_option`); cancelling the turn answers it CANCELLED (ACP outcome `cancelled`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from services.sandbox.domain.models import EventKind, EventSender, NewEvent, SessionKey


class PermissionState(StrEnum):
    PENDING = "pending"
    ANSWERED = "answered"
    CANCELLED = "cancelled"


class PermissionOutcome(StrEnum):
    ALLOW_ONCE = "allow_once"
    ALLOW_ALWAYS = "allow_always"
    REJECT = "reject"
    CANCELLED = "cancelled"  # the turn was cancelled while the request waited; never a user's answer

    @property
    def allows(self) -> bool:
        return self in (PermissionOutcome.ALLOW_ONCE, PermissionOutcome.ALLOW_ALWAYS)


ANSWERS = (PermissionOutcome.ALLOW_ONCE, PermissionOutcome.ALLOW_ALWAYS, PermissionOutcome.REJECT)

# Option kinds an answer picks, in order of preference.
_KINDS = {
    PermissionOutcome.ALLOW_ONCE: ("allow_once", "allow_always"),
    PermissionOutcome.ALLOW_ALWAYS: ("allow_always", "allow_once"),
    PermissionOutcome.REJECT: ("reject_once", "reject_always"),
    PermissionOutcome.CANCELLED: (),
}


@dataclass
class PermissionRequest:
    """One `session/request_permission` waiting for, or having got, a user's answer.

    `tool_call` and `options` are the agent's ACP objects as received (JSON, camelCase keys)."""

    session: SessionKey
    request_id: str
    turn_id: str
    title: str
    tool_call: dict[str, Any]
    options: list[dict[str, Any]]
    state: PermissionState
    outcome: PermissionOutcome | None
    option_id: str
    answered_by: str
    delivered: bool
    create_time: dt.datetime
    answer_time: dt.datetime | None

    @property
    def name(self) -> str:
        return f"{self.session.name}/permissionRequests/{self.request_id}"


def choose_option(outcome: PermissionOutcome, options: list[dict[str, Any]]) -> str:
    """The id of the agent's option `outcome` picks (see `_KINDS`), or "" when it offered none of
    those kinds (a REJECT then reaches the agent as ACP `cancelled`)."""
    for kind in _KINDS[outcome]:
        for option in options:
            if option.get("kind") == kind:
                return str(option.get("optionId", ""))
    return ""


def request_title(params: dict[str, Any]) -> str:
    """A short description of what the agent asks to do: its tool call's title, else its kind."""
    tool_call = params.get("toolCall") or {}
    return str(tool_call.get("title") or tool_call.get("kind") or "a tool call")


def request_event(request_id: str, params: dict[str, Any]) -> NewEvent:
    """The PERMISSION_REQUEST log entry of a request asked of the user (the ACP params + requestId)."""
    return NewEvent(
        EventKind.PERMISSION_REQUEST,
        EventSender.AGENT,
        request_title(params),
        {**params, "requestId": request_id},
    )


def response_event(
    request: PermissionRequest, outcome: PermissionOutcome, option_id: str, user: str, delivered: bool
) -> NewEvent:
    """The PERMISSION_RESPONSE log entry of an answer (a user's, or `cancelled`)."""
    return NewEvent(
        EventKind.PERMISSION_RESPONSE,
        EventSender.CLIENT,
        f"{outcome.value}: {option_id or 'cancelled'}",
        {
            "requestId": request.request_id,
            "answer": outcome.value,
            "optionId": option_id,
            "user": user,
            "delivered": delivered,
            "title": request.title,
            "outcome": (
                {"outcome": "selected", "optionId": option_id} if option_id else {"outcome": "cancelled"}
            ),
        },
    )
