"""Background work on a task under its lease: the provisioning steps and the publish command.

`run_leased` runs one piece of work while renewing the lease, with a deadline, and turns its end into
either a result or a `StepFailed` to record; a retryable error on a non-final delivery releases the
lease and propagates (the queue retries later), and a cancellation (shutdown) hands the lease back
at once so the next replica need not wait for it to lapse.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TypeVar

from services.platform.aio import periodically
from services.platform.errors import FoundryError
from services.platform.logging import get_logger
from services.task.domain.models import now
from services.task.store import queries
from services.task.usecases.deps import Deps

log = get_logger(__name__)
T = TypeVar("T")


class StepFailed(Exception):
    """A failure to record on the task (readable `message`), not to retry."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


async def run_leased(
    deps: Deps,
    task_id: str,
    claim: str,
    work: Callable[[], Awaitable[T]],
    *,
    timeout: float,
    doing: Callable[[], str],
    last_attempt: bool,
    release_on_retry: bool = True,
) -> T | StepFailed:
    """`await work()` while holding the lease `claim` on the task, within `timeout` seconds.

    Returns the work's result, or a StepFailed ("<doing()> timed out after …" / "<doing()> failed: …",
    or one the work raised). Raises a retryable FoundryError (after releasing the lease, unless not
    `release_on_retry`: the caller hands it back itself) unless `last_attempt`, and CancelledError
    (after releasing the lease)."""
    # Renewed every third of the lease (at most every 4 s), never cut off in its transaction.
    renewing = periodically(
        min(deps.lease_seconds / 3, 4.0), partial(renew, deps, task_id, claim), name=f"lease-{task_id}"
    )
    try:
        async with renewing, asyncio.timeout(timeout):  # not wait_for: it can swallow a cancel on 3.11
            return await work()
    except TimeoutError:
        return StepFailed(f"{doing()} timed out after {timeout:g} s")
    except StepFailed as failed:
        return failed
    except FoundryError as exc:
        if exc.retryable and not last_attempt:
            if release_on_retry:
                await release(deps, task_id, claim)
            raise
        return StepFailed(f"{doing()} failed: {exc.message}")
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await asyncio.shield(release(deps, task_id, claim))
        raise


async def renew(deps: Deps, task_id: str, claim: str) -> None:
    """Extend the lease `claim` by its length, if it still holds it. A failure is logged, not raised:
    a missed renewal only shortens the lease, and the next one may succeed."""
    try:
        async with deps.db.transaction() as session:
            await queries.set_lease(
                session,
                task_id=task_id,
                owner=claim,
                until=now() + dt.timedelta(seconds=deps.lease_seconds),
                expected_owner=claim,
            )
    except Exception:
        log.warning("lease_renew_failed", task_id=task_id, exc_info=True)


async def release(deps: Deps, task_id: str, claim: str) -> None:
    """Give the lease back, if `claim` still holds it."""
    async with deps.db.transaction() as session:
        await queries.set_lease(session, task_id=task_id, owner=None, until=None, expected_owner=claim)


async def any_stalled(deps: Deps) -> bool:
    """Whether some task's provisioning or publication is held by a lease that lapsed (its replica
    died or stalled): the stall sweep's check, one statement, so a quiet sweep opens no transaction."""
    return await queries.any_stalled_task(deps.db, at=now())
