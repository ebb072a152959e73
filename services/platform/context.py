"""Request context carried in contextvars: bound once at the edge of a process (the gRPC context
interceptor or the queue consumer wrapper), read by logs, outgoing gRPC metadata and AMQP headers.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextvars import ContextVar

import structlog

from services.platform.identity import Caller

REQUEST_ID_HEADER = "x-request-id"

_request_id: ContextVar[str | None] = ContextVar("foundry_request_id", default=None)
_caller: ContextVar[Caller | None] = ContextVar("foundry_caller", default=None)


def new_request_id() -> str:
    """32 random hex digits (the length of a uuid4's hex; without building a UUID, once per RPC)."""
    return os.urandom(16).hex()


def request_id() -> str | None:
    """The correlation id of the work in progress, if any."""
    return _request_id.get()


def caller() -> Caller | None:
    """Who asked for the work in progress (a user, or a service acting in the background)."""
    return _caller.get()


@contextlib.contextmanager
def bound(*, request_id: str | None = None, caller: Caller | None = None) -> Iterator[None]:
    """Bind the correlation id and caller for the duration of a block (logs carry them too)."""
    rid = request_id or new_request_id()
    t1 = _request_id.set(rid)
    t2 = _caller.set(caller)
    log_vars = {"request_id": rid}
    if caller is not None:
        log_vars["caller"] = caller.subject
    with structlog.contextvars.bound_contextvars(**log_vars):
        try:
            yield
        finally:
            _request_id.reset(t1)
            _caller.reset(t2)


def bind_task(*, request_id: str | None = None, caller: Caller | None = None) -> None:
    """Bind values for the rest of the current asyncio task (one gRPC call = one task), no reset needed."""
    if request_id is not None:
        _request_id.set(request_id)
        structlog.contextvars.bind_contextvars(request_id=request_id)
    if caller is not None:
        _caller.set(caller)
        structlog.contextvars.bind_contextvars(caller=caller.subject)
