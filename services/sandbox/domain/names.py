"""Parsing and validation of the sandbox service's resource names (INVALID_ARGUMENT when malformed)."""

from __future__ import annotations

import re

from services.sandbox.domain.errors import require
from services.sandbox.domain.models import SandboxKey, SessionKey

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def valid_id(value: str) -> bool:
    """An id segment: 1-128 of letters, digits, `.`, `_`, `-`, starting with a letter or digit."""
    return bool(_ID.match(value))


def _segments(name: str, field: str, shape: str, count: int) -> list[str]:
    parts = name.split("/")
    pattern = shape.split("/")
    ok = len(parts) == count and all(
        (p.startswith("{") or p == v) and (not p.startswith("{") or valid_id(v))
        for p, v in zip(pattern, parts, strict=False)
    )
    require(ok, field, f"must look like {shape}, got {name!r}")
    return parts


def organization(name: str, field: str = "parent") -> str:
    """`organizations/{organization}` → organization id."""
    return _segments(name, field, "organizations/{organization}", 2)[1]


def sandbox(name: str, field: str = "name") -> SandboxKey:
    """`organizations/{organization}/sandboxes/{sandbox}` → SandboxKey."""
    p = _segments(name, field, "organizations/{organization}/sandboxes/{sandbox}", 4)
    return SandboxKey(p[1], p[3])


def git_state(name: str, field: str = "name") -> SandboxKey:
    """`organizations/{organization}/sandboxes/{sandbox}/gitState` → SandboxKey."""
    p = _segments(name, field, "organizations/{organization}/sandboxes/{sandbox}/gitState", 5)
    return SandboxKey(p[1], p[3])


def session(name: str, field: str = "name") -> SessionKey:
    """`organizations/{o}/sandboxes/{s}/sessions/{session}` → SessionKey."""
    p = _segments(name, field, "organizations/{organization}/sandboxes/{sandbox}/sessions/{session}", 6)
    return SessionKey(SandboxKey(p[1], p[3]), p[5])


def turn(name: str, field: str = "name") -> tuple[SessionKey, str]:
    """`.../sessions/{session}/turns/{turn}` → (SessionKey, turn id)."""
    p = _segments(
        name, field, "organizations/{organization}/sandboxes/{sandbox}/sessions/{session}/turns/{turn}", 8
    )
    return SessionKey(SandboxKey(p[1], p[3]), p[5]), p[7]


def process(name: str, field: str = "name") -> tuple[SandboxKey, str]:
    """`organizations/{o}/sandboxes/{s}/processes/{process}` → (SandboxKey, process id)."""
    p = _segments(name, field, "organizations/{organization}/sandboxes/{sandbox}/processes/{process}", 6)
    return SandboxKey(p[1], p[3]), p[5]


def agent(name: str, field: str = "agent") -> str:
    """`agents/{agent}` → agent name; "" stays "" (the configured default)."""
    if not name:
        return ""
    return _segments(name, field, "agents/{agent}", 2)[1]
