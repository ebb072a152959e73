"""Parsing and validation of the sandbox service's resource names (INVALID_ARGUMENT when malformed)."""

from __future__ import annotations

from services.platform.names import ID, ResourcePattern
from services.sandbox.domain.errors import DOMAIN
from services.sandbox.domain.models import SandboxKey, SessionKey


def _pattern(pattern: str) -> ResourcePattern:
    return ResourcePattern(pattern, default=ID, domain=DOMAIN)


ORGANIZATION = _pattern("organizations/{organization}")
SANDBOX = _pattern("organizations/{organization}/sandboxes/{sandbox}")
GIT_STATE = _pattern("organizations/{organization}/sandboxes/{sandbox}/gitState")
SESSION = _pattern("organizations/{organization}/sandboxes/{sandbox}/sessions/{session}")
TURN = _pattern("organizations/{organization}/sandboxes/{sandbox}/sessions/{session}/turns/{turn}")
PERMISSION_REQUEST = _pattern(
    "organizations/{organization}/sandboxes/{sandbox}/sessions/{session}/permissionRequests/{request}"
)
PROCESS = _pattern("organizations/{organization}/sandboxes/{sandbox}/processes/{process}")
AGENT = _pattern("agents/{agent}")


def valid_id(value: str) -> bool:
    """An id segment: 1-128 of letters, digits, `.`, `_`, `-`, starting with a letter or digit."""
    return ID.matches(value)


def organization(name: str, field: str = "parent") -> str:
    """`organizations/{organization}` → organization id."""
    return ORGANIZATION.parse(name, field)[0]


def sandbox(name: str, field: str = "name") -> SandboxKey:
    """`organizations/{organization}/sandboxes/{sandbox}` → SandboxKey."""
    org, sid = SANDBOX.parse(name, field)
    return SandboxKey(org, sid)


def git_state(name: str, field: str = "name") -> SandboxKey:
    """`organizations/{organization}/sandboxes/{sandbox}/gitState` → SandboxKey."""
    org, sid = GIT_STATE.parse(name, field)
    return SandboxKey(org, sid)


def session(name: str, field: str = "name") -> SessionKey:
    """`organizations/{o}/sandboxes/{s}/sessions/{session}` → SessionKey."""
    org, sid, session_id = SESSION.parse(name, field)
    return SessionKey(SandboxKey(org, sid), session_id)


def turn(name: str, field: str = "name") -> tuple[SessionKey, str]:
    """`.../sessions/{session}/turns/{turn}` → (SessionKey, turn id)."""
    org, sid, session_id, turn_id = TURN.parse(name, field)
    return SessionKey(SandboxKey(org, sid), session_id), turn_id


def permission_request(name: str, field: str = "name") -> tuple[SessionKey, str]:
    """`.../sessions/{session}/permissionRequests/{request}` → (SessionKey, request id)."""
    org, sid, session_id, request_id = PERMISSION_REQUEST.parse(name, field)
    return SessionKey(SandboxKey(org, sid), session_id), request_id


def process(name: str, field: str = "name") -> tuple[SandboxKey, str]:
    """`organizations/{o}/sandboxes/{s}/processes/{process}` → (SandboxKey, process id)."""
    org, sid, process_id = PROCESS.parse(name, field)
    return SandboxKey(org, sid), process_id


def agent(name: str, field: str = "agent") -> str:
    """`agents/{agent}` → agent name; "" stays "" (the configured default)."""
    if not name:
        return ""
    return AGENT.parse(name, field)[0]
