"""Parsing of the resource names the task service accepts (INVALID_ARGUMENT on malformed ones)."""

from __future__ import annotations

from services.platform.names import ResourcePattern, id_rule
from services.task.domain.errors import DOMAIN

_ID = id_rule(100)


def _pattern(pattern: str) -> ResourcePattern:
    return ResourcePattern(pattern, default=_ID, domain=DOMAIN)


ORGANIZATION = _pattern("organizations/{organization}")
TASK = _pattern("organizations/{organization}/tasks/{task}")
SESSION = _pattern("organizations/{organization}/tasks/{task}/sessions/{session}")
PERMISSION_REQUEST = _pattern(
    "organizations/{organization}/tasks/{task}/sessions/{session}/permissionRequests/{request}"
)
MESSAGE = _pattern("organizations/{organization}/tasks/{task}/sessions/{session}/messages/{message}")
REPOSITORY = _pattern("organizations/{organization}/repositories/{repository}")
USER_TASK_STATE = _pattern("organizations/{organization}/tasks/{task}/userStates/{user}")
USER_SESSION_STATE = _pattern(
    "organizations/{organization}/tasks/{task}/sessions/{session}/userStates/{user}"
)
USER = _pattern("users/{user}")
AGENT = _pattern("agents/{agent}")
# Names of the sandbox service's resources, read from its events.
TURN = _pattern("organizations/{organization}/sandboxes/{sandbox}/sessions/{session}/turns/{turn}")
SANDBOX_SESSION = _pattern("organizations/{organization}/sandboxes/{sandbox}/sessions/{session}")
GIT_STATE = _pattern("organizations/{organization}/sandboxes/{sandbox}/gitState")


def organization(value: str, field: str = "parent") -> str:
    """`organizations/{org}` → org."""
    return ORGANIZATION.parse(value, field)[0]


def task(value: str, field: str = "name") -> tuple[str, str]:
    """`organizations/{org}/tasks/{task}` → (org, task)."""
    org, tid = TASK.parse(value, field)
    return org, tid


def session(value: str, field: str = "name") -> tuple[str, str, str]:
    """`organizations/{org}/tasks/{task}/sessions/{session}` → (org, task, session)."""
    org, tid, sid = SESSION.parse(value, field)
    return org, tid, sid


def message(value: str, field: str = "name") -> tuple[str, str, str, str]:
    """`.../sessions/{session}/messages/{message}` → (org, task, session, message)."""
    org, tid, sid, mid = MESSAGE.parse(value, field)
    return org, tid, sid, mid


def permission_request(value: str, field: str = "name") -> tuple[str, str, str, str]:
    """`.../sessions/{session}/permissionRequests/{request}` → (org, task, session, request)."""
    org, tid, sid, rid = PERMISSION_REQUEST.parse(value, field)
    return org, tid, sid, rid


def repository(value: str, field: str = "task.repository") -> tuple[str, str]:
    """`organizations/{org}/repositories/{repo}` → (org, repo)."""
    org, rid = REPOSITORY.parse(value, field)
    return org, rid


def user_task_state(value: str, field: str = "name") -> tuple[str, str, str]:
    """`organizations/{org}/tasks/{task}/userStates/{user}` → (org, task, user or `me`)."""
    org, tid, user = USER_TASK_STATE.parse(value, field)
    return org, tid, user


def user_session_state(value: str, field: str = "name") -> tuple[str, str, str, str]:
    """`.../sessions/{session}/userStates/{user}` → (org, task, session, user or `me`)."""
    org, tid, sid, user = USER_SESSION_STATE.parse(value, field)
    return org, tid, sid, user


def user(value: str, field: str = "user") -> str:
    """`users/{user}` → user id."""
    return USER.parse(value, field)[0]


def agent(value: str, field: str = "agent") -> str:
    """`agents/{agent}` → agent id; "" stays "" (the configured default)."""
    return AGENT.parse(value, field)[0] if value else ""


def turn(value: str) -> tuple[str, str, str, str] | None:
    """A sandbox turn name → (org, sandbox, session, turn), or None if it is not one."""
    ids = TURN.match(value)
    return (ids[0], ids[1], ids[2], ids[3]) if ids else None


def sandbox_session(value: str) -> tuple[str, str, str] | None:
    """A sandbox agent-session name → (org, sandbox, session), or None."""
    ids = SANDBOX_SESSION.match(value)
    return (ids[0], ids[1], ids[2]) if ids else None


def git_state(value: str) -> tuple[str, str] | None:
    """A sandbox git-state name → (org, sandbox), or None."""
    ids = GIT_STATE.match(value)
    return (ids[0], ids[1]) if ids else None
