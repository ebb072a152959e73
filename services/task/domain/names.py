"""Parsing of the resource names the task service accepts (INVALID_ARGUMENT on malformed ones)."""

from __future__ import annotations

import re

from services.task.domain.errors import invalid

_ID = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
_ORG = re.compile(rf"^organizations/({_ID})$")
_TASK = re.compile(rf"^organizations/({_ID})/tasks/({_ID})$")
_SESSION = re.compile(rf"^organizations/({_ID})/tasks/({_ID})/sessions/({_ID})$")
_MESSAGE = re.compile(rf"^organizations/({_ID})/tasks/({_ID})/sessions/({_ID})/messages/({_ID})$")
_REPOSITORY = re.compile(rf"^organizations/({_ID})/repositories/({_ID})$")
_USER_TASK_STATE = re.compile(rf"^organizations/({_ID})/tasks/({_ID})/userStates/({_ID})$")
_USER_SESSION_STATE = re.compile(
    rf"^organizations/({_ID})/tasks/({_ID})/sessions/({_ID})/userStates/({_ID})$"
)
_USER = re.compile(rf"^users/({_ID})$")
_AGENT = re.compile(rf"^agents/({_ID})$")
_TURN = re.compile(rf"^organizations/({_ID})/sandboxes/({_ID})/sessions/({_ID})/turns/({_ID})$")
_SANDBOX_SESSION = re.compile(rf"^organizations/({_ID})/sandboxes/({_ID})/sessions/({_ID})$")
_GIT_STATE = re.compile(rf"^organizations/({_ID})/sandboxes/({_ID})/gitState$")


def _match(pattern: re.Pattern[str], value: str, field: str, shape: str) -> tuple[str, ...]:
    m = pattern.match(value or "")
    if m is None:
        raise invalid(field, f"must look like {shape}, got {value!r}")
    return m.groups()


def organization(value: str, field: str = "parent") -> str:
    """`organizations/{org}` → org."""
    return _match(_ORG, value, field, "organizations/{organization}")[0]


def task(value: str, field: str = "name") -> tuple[str, str]:
    """`organizations/{org}/tasks/{task}` → (org, task)."""
    org, tid = _match(_TASK, value, field, "organizations/{organization}/tasks/{task}")
    return org, tid


def session(value: str, field: str = "name") -> tuple[str, str, str]:
    """`organizations/{org}/tasks/{task}/sessions/{session}` → (org, task, session)."""
    org, tid, sid = _match(
        _SESSION, value, field, "organizations/{organization}/tasks/{task}/sessions/{session}"
    )
    return org, tid, sid


def message(value: str, field: str = "name") -> tuple[str, str, str, str]:
    """`.../sessions/{session}/messages/{message}` → (org, task, session, message)."""
    org, tid, sid, mid = _match(_MESSAGE, value, field, "…/sessions/{session}/messages/{message}")
    return org, tid, sid, mid


def repository(value: str, field: str = "task.repository") -> tuple[str, str]:
    """`organizations/{org}/repositories/{repo}` → (org, repo)."""
    org, rid = _match(_REPOSITORY, value, field, "organizations/{organization}/repositories/{repository}")
    return org, rid


def user_task_state(value: str, field: str = "name") -> tuple[str, str, str]:
    """`organizations/{org}/tasks/{task}/userStates/{user}` → (org, task, user or `me`)."""
    org, tid, user = _match(
        _USER_TASK_STATE, value, field, "organizations/{organization}/tasks/{task}/userStates/{user}"
    )
    return org, tid, user


def user_session_state(value: str, field: str = "name") -> tuple[str, str, str, str]:
    """`.../sessions/{session}/userStates/{user}` → (org, task, session, user or `me`)."""
    org, tid, sid, user = _match(_USER_SESSION_STATE, value, field, "…/sessions/{session}/userStates/{user}")
    return org, tid, sid, user


def user(value: str, field: str = "user") -> str:
    """`users/{user}` → user id."""
    return _match(_USER, value, field, "users/{user}")[0]


def agent(value: str, field: str = "agent") -> str:
    """`agents/{agent}` → agent id; "" stays "" (the configured default)."""
    return _match(_AGENT, value, field, "agents/{agent}")[0] if value else ""


def turn(value: str) -> tuple[str, str, str, str] | None:
    """A sandbox turn name → (org, sandbox, session, turn), or None if it is not one."""
    m = _TURN.match(value or "")
    return (m.group(1), m.group(2), m.group(3), m.group(4)) if m else None


def sandbox_session(value: str) -> tuple[str, str, str] | None:
    """A sandbox agent-session name → (org, sandbox, session), or None."""
    m = _SANDBOX_SESSION.match(value or "")
    return (m.group(1), m.group(2), m.group(3)) if m else None


def git_state(value: str) -> tuple[str, str] | None:
    """A sandbox git-state name → (org, sandbox), or None."""
    m = _GIT_STATE.match(value or "")
    return (m.group(1), m.group(2)) if m else None
