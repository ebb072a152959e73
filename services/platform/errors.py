"""The mesh's error tree, mapped to gRPC status codes in exactly one place (the first interceptor).

    FoundryError                       (code, reason, domain, metadata, retryable)
    ├── InvalidArgument                INVALID_ARGUMENT    bad input; nothing changed
    ├── NotFound                       NOT_FOUND
    ├── AlreadyExists                  ALREADY_EXISTS
    ├── FailedPrecondition             FAILED_PRECONDITION the resource is not in a state that allows it
    ├── PermissionDenied               PERMISSION_DENIED
    ├── Unauthenticated                UNAUTHENTICATED
    ├── Aborted                        ABORTED             concurrency conflict; retry the whole operation
    ├── ResourceExhausted              RESOURCE_EXHAUSTED
    ├── DeadlineExceeded               DEADLINE_EXCEEDED
    ├── Unavailable                    UNAVAILABLE         retryable (AIP-194); also used while draining
    └── Internal                       INTERNAL

Each error carries an UPPER_SNAKE `reason` that is part of the API (AIP-193 `ErrorInfo.reason`) and a
`domain` such as `foundry.task`. Queue workers use `retryable` to choose between a delayed retry and
the dead-letter queue.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc


class FoundryError(Exception):
    """Base of every error the mesh raises on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    default_reason: str = "INTERNAL"
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        domain: str = "foundry",
        metadata: Mapping[str, str] | None = None,
        retryable: bool | None = None,
        field_violations: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.domain = domain
        self.metadata = dict(metadata or {})
        self.field_violations = dict(field_violations or {})
        if retryable is not None:
            self.retryable = retryable


class InvalidArgument(FoundryError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"


class NotFound(FoundryError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(FoundryError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(FoundryError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class PermissionDenied(FoundryError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Unauthenticated(FoundryError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class Aborted(FoundryError):
    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"
    retryable = True


class ResourceExhausted(FoundryError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"
    retryable = True


class DeadlineExceeded(FoundryError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"
    retryable = True


class Unavailable(FoundryError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"
    retryable = True


class Internal(FoundryError):
    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"


def require(condition: bool, field: str, message: str, *, domain: str = "foundry") -> None:
    """Raise `InvalidArgument` naming `field` unless `condition` holds."""
    if not condition:
        raise InvalidArgument(f"{field}: {message}", domain=domain, field_violations={field: message})


_BY_CODE: dict[grpc.StatusCode, type[FoundryError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        PermissionDenied,
        Unauthenticated,
        Aborted,
        ResourceExhausted,
        DeadlineExceeded,
        Unavailable,
        Internal,
    )
}


# Codes that describe the caller's request (its input, the resource it names, its rights): the
# peer's message already says what is wrong in the caller's terms, so it passes through unprefixed;
# naming the internal call ("GetRepository: …") would only confuse the person reading it.
_ABOUT_THE_REQUEST = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)


def from_rpc_error(exc: grpc.RpcError, *, context: str = "") -> FoundryError:
    """Turn a peer's `grpc.aio.AioRpcError` into the same FoundryError class (keeping its reason).

    Used by service clients so a NOT_FOUND from a peer surfaces as NotFound here, and a CANCELLED
    or unknown code as Unavailable (retryable). `context` (which call failed) prefixes the message of
    server-side failures (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, …) only; errors about the request
    keep the peer's message as it is.
    """
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    cls = _BY_CODE.get(code, Unavailable)
    reason, domain, metadata = None, "foundry", {}
    try:
        from google.rpc import error_details_pb2
        from grpc_status import rpc_status  # local: only when a peer fails

        status = rpc_status.from_call(exc)
        if status is not None:
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    reason, domain, metadata = info.reason, info.domain or domain, dict(info.metadata)
    except Exception:
        reason, metadata = None, {}
    prefix = f"{context}: " if context and code not in _ABOUT_THE_REQUEST else ""
    return cls(f"{prefix}{details}", reason=reason, domain=domain, metadata=metadata)
