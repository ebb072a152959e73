"""RevertFile: recorded on the task by the RPC, run against the sandbox by a worker.

The RPC validates the path, appends a pending entry to the task's `file_reverts` and enqueues
`RevertTaskFile` on `task.revert_file` in one transaction. The worker asks the sandbox service to
revert the file (git runs there) and records the entry DONE, or FAILED with the reason; a retryable
failure is retried and recorded FAILED after the last attempt. The reverted file leaves the task's
git state through the sandbox's own GitStateUpdated event.
"""

from __future__ import annotations

import uuid
from typing import Any

from foundry.task.v1 import events_pb2

from services.platform.errors import FoundryError
from services.platform.logging import get_logger
from services.task.domain import names
from services.task.domain.errors import NoSandbox, TaskEnded, TaskNotFound, invalid, require
from services.task.domain.models import Session, Task, now
from services.task.store import queries
from services.task.usecases.changes import Audit, task_changed
from services.task.usecases.deps import Deps

log = get_logger(__name__)
QUEUE = "revert_file"
KEEP = 20  # entries kept on the task (pending ones are never dropped)
PENDING, DONE, FAILED = "pending", "done", "failed"


def validate_path(path: str) -> str:
    """A relative path inside the checkout; raises InvalidArgument (`path`)."""
    if not path or path.startswith("/") or ".." in path.split("/") or "\0" in path:
        raise invalid("path", "must be a relative path inside the checkout")
    require(len(path) <= 4096, "path", "must be at most 4096 characters")
    return path


async def request(deps: Deps, name: str, path: str, request_id: str) -> tuple[Task, list[Session]]:
    """Record the revert (PENDING) and enqueue it; a retry with the same request id returns the task
    as it is. Errors: InvalidArgument, NotFound, PermissionDenied, FailedPrecondition (`NO_SANDBOX`,
    `TASK_ENDED`)."""
    org, task_id = names.task(name)
    path = validate_path(path)
    require(len(request_id) <= 100, "request_id", "must be at most 100 characters")
    await deps.membership.require(f"organizations/{org}")
    async with deps.db.transaction() as session:
        task = await queries.get_task(session, task_id=task_id, organization=org, lock=True)
        if task is None:
            raise TaskNotFound(name)
        if request_id and any(r["request_id"] == request_id for r in task.file_reverts):
            return task, await queries.list_sessions(session, task_id=task_id)
        if task.ended:
            raise TaskEnded(task.name, task.status)
        if task.provisioning or not task.sandbox_cwd:
            raise NoSandbox(task.name)
        at = now().isoformat()
        entry = {
            "request_id": request_id or uuid.uuid4().hex,
            "path": path,
            "state": PENDING,
            "error": "",
            "requested_at": at,
            "updated_at": at,
        }
        task.file_reverts = _trim([entry, *task.file_reverts])
        sessions = await task_changed(session, deps, task, audits=[Audit("task.file.revert", path=path)])
        await deps.outbox.enqueue(
            session,
            queue=deps.queue(QUEUE),
            message=events_pb2.RevertTaskFile(name=task.name, request_id=entry["request_id"]),
        )
    return task, sessions


def _trim(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    kept = entries[:KEEP]
    return kept + [e for e in entries[KEEP:] if e["state"] == PENDING]


async def run(deps: Deps, item: events_pb2.RevertTaskFile, *, last_attempt: bool) -> None:
    """Background: revert the entry's file in the sandbox and record the outcome. Raises a retryable
    FoundryError to be retried unless `last_attempt`, when the failure is recorded instead."""
    _, task_id = names.task(item.name)
    async with deps.db.snapshot() as session:
        task = await queries.get_task(session, task_id=task_id)
    entry = _entry(task, item.request_id) if task else None
    if task is None or entry is None or entry["state"] != PENDING:
        return
    try:
        await deps.sandbox.revert_file(task.sandbox_name, entry["path"])
        outcome, error = DONE, ""
    except FoundryError as exc:
        if exc.retryable and not last_attempt:
            raise
        outcome, error = FAILED, exc.message
        log.warning("file_revert_failed", task=item.name, path=entry["path"], error=error)
    async with deps.db.transaction() as session:
        task = await queries.get_task(session, task_id=task_id, lock=True)
        entry = _entry(task, item.request_id) if task else None
        if task is None or entry is None or entry["state"] != PENDING:
            return
        entry.update(state=outcome, error=error, updated_at=now().isoformat())
        audits = [Audit("task.file.revert.failed", path=entry["path"], error=error)] if error else []
        await task_changed(session, deps, task, audits=audits)


def _entry(task: Task, request_id: str) -> dict[str, Any] | None:
    return next((r for r in task.file_reverts if r["request_id"] == request_id), None)
