"""Error reasons of the organization service (ErrorInfo domain `foundry.organization`)."""

from __future__ import annotations

from services.platform.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)

DOMAIN = "foundry.organization"


def organization_not_found(org_id: str) -> NotFound:
    return NotFound(f"organization {org_id!r} not found", reason="ORGANIZATION_NOT_FOUND", domain=DOMAIN)


def branch_taken(repository: str, branch: str, owner_task: str) -> AlreadyExists:
    return AlreadyExists(
        f"branch {branch!r} of {repository} belongs to {owner_task}",
        reason="BRANCH_TAKEN",
        domain=DOMAIN,
        metadata={"task": owner_task, "repository": repository, "branch": branch},
    )


def not_a_member(organization: str, user: str) -> PermissionDenied:
    return PermissionDenied(
        f"{user} is not a member of {organization}",
        reason="NOT_A_MEMBER",
        domain=DOMAIN,
        metadata={"organization": organization},
    )


def session_invalid(reason: str, message: str) -> Unauthenticated:
    return Unauthenticated(message, reason=reason, domain=DOMAIN)


def precondition(reason: str, message: str) -> FailedPrecondition:
    return FailedPrecondition(message, reason=reason, domain=DOMAIN)
