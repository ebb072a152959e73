"""The task service's error classes (domain `foundry.task`) with their stable reasons."""

from __future__ import annotations

from services.platform.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

DOMAIN = "foundry.task"


class TaskNotFound(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"task {name} not found", reason="TASK_NOT_FOUND", domain=DOMAIN, metadata={"task": name}
        )


class SessionNotFound(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"session {name} not found", reason="SESSION_NOT_FOUND", domain=DOMAIN, metadata={"session": name}
        )


class SessionNotReady(FailedPrecondition):
    def __init__(self, name: str, status: str) -> None:
        super().__init__(
            f"session {name} is not ready (status {status}); wait until it is ready",
            reason="SESSION_NOT_READY",
            domain=DOMAIN,
            metadata={"session": name, "status": status},
        )


class TaskEnded(FailedPrecondition):
    def __init__(self, name: str, status: str) -> None:
        super().__init__(
            f"task {name} is {status}",
            reason="TASK_ENDED",
            domain=DOMAIN,
            metadata={"task": name, "status": status},
        )


class LastOpenSession(FailedPrecondition):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"session {name} is the task's last open session", reason="LAST_OPEN_SESSION", domain=DOMAIN
        )


class NoSandbox(FailedPrecondition):
    def __init__(self, name: str) -> None:
        super().__init__(f"task {name} has no prepared sandbox yet", reason="NO_SANDBOX", domain=DOMAIN)


class AgentNotInstalled(FailedPrecondition):
    def __init__(self, agent: str, command: str) -> None:
        super().__init__(
            f"agents/{agent} is configured here but its command {command!r} is not installed on the "
            "sandbox service; pick another agent (ListAgents says which are available)",
            reason="AGENT_NOT_INSTALLED",
            domain=DOMAIN,
            metadata={"agent": f"agents/{agent}"},
        )


class AgentCredentialsMissing(FailedPrecondition):
    def __init__(self, agent: str, why: str) -> None:
        super().__init__(
            f"agents/{agent} cannot reach its model API here: {why}; pick another agent or ask the "
            "operator to configure its key (ListAgents says which are available)",
            reason="AGENT_CREDENTIALS_MISSING",
            domain=DOMAIN,
            metadata={"agent": f"agents/{agent}"},
        )


def invalid(field: str, message: str) -> InvalidArgument:
    """An INVALID_ARGUMENT naming `field`."""
    return InvalidArgument(f"{field}: {message}", domain=DOMAIN, field_violations={field: message})


def require(condition: bool, field: str, message: str) -> None:
    """Raise INVALID_ARGUMENT naming `field` unless `condition` holds."""
    if not condition:
        raise invalid(field, message)


__all__ = [
    "DOMAIN",
    "AgentCredentialsMissing",
    "AgentNotInstalled",
    "AlreadyExists",
    "LastOpenSession",
    "NoSandbox",
    "SessionNotFound",
    "SessionNotReady",
    "TaskEnded",
    "TaskNotFound",
    "invalid",
    "require",
]
