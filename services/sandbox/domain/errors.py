"""Errors the sandbox service raises; each carries a stable reason and the domain `foundry.sandbox`."""

from __future__ import annotations

from services.platform import errors as base

DOMAIN = "foundry.sandbox"


def require(condition: bool, field: str, message: str) -> None:
    """Raise INVALID_ARGUMENT naming `field` unless `condition` holds."""
    base.require(condition, field, message, domain=DOMAIN)


def not_found(what: str, name: str) -> base.NotFound:
    return base.NotFound(
        f"{what} {name} does not exist",
        reason=f"{what.upper().replace(' ', '_')}_NOT_FOUND",
        domain=DOMAIN,
        metadata={"name": name},
    )


def precondition(message: str, reason: str) -> base.FailedPrecondition:
    return base.FailedPrecondition(message, reason=reason, domain=DOMAIN)


class GitError(base.Unavailable):
    """A git command failed for a reason that may pass (network, lock); the message holds git's output."""

    default_reason = "GIT_FAILED"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message, reason=reason, domain=DOMAIN)


class RemoteUnusable(base.FailedPrecondition):
    """The remote cannot be used (missing, not a repository, access denied): retrying will not help."""

    default_reason = "GIT_REMOTE_UNUSABLE"

    def __init__(self, message: str) -> None:
        super().__init__(message, domain=DOMAIN)


class AgentFailed(base.FailedPrecondition):
    """The agent could not be started or answered with an error; the message says why."""

    default_reason = "AGENT_FAILED"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message, reason=reason, domain=DOMAIN)
