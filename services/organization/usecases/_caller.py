"""Who is calling (from the request context bound by the CallerIdentity interceptor)."""

from __future__ import annotations

from services.organization.domain.errors import DOMAIN
from services.platform import context as request_context
from services.platform.errors import PermissionDenied, Unauthenticated
from services.platform.identity import Caller


def current() -> Caller:
    """The caller; raises Unauthenticated when none is bound."""
    caller = request_context.caller()
    if caller is None:
        raise Unauthenticated("no caller identity", reason="CALLER_IDENTITY_MISSING", domain=DOMAIN)
    return caller


def user_id() -> str:
    """The calling user's id; raises PermissionDenied for service callers."""
    caller = current()
    if caller.is_service:
        raise PermissionDenied("this call needs a user caller", reason="USER_CALLER_REQUIRED", domain=DOMAIN)
    return caller.user_id


def require_self_or_service(target_user_id: str) -> None:
    """Raise PermissionDenied unless the caller is `target_user_id` or a service."""
    caller = current()
    if not caller.is_service and caller.user_id != target_user_id:
        raise PermissionDenied(
            "callers may only act on their own user", reason="NOT_YOUR_USER", domain=DOMAIN
        )
