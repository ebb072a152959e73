"""Archive and kill: requested by an RPC (returns at once) and run to their end by a worker."""

from __future__ import annotations

from foundry.task.v1 import events_pb2

from services.platform.errors import FailedPrecondition, FoundryError
from services.platform.logging import get_logger
from services.task.domain import names
from services.task.domain.models import Session, Task, now
from services.task.store import queries
from services.task.usecases.changes import Audit, task_changed
from services.task.usecases.deps import Deps

log = get_logger(__name__)
FIRST_STATUS = {"archive": "archive_stop_sessions", "kill": "kill_destroy_sandbox"}
FINAL_STATUS = {"archive": "archived", "kill": "killed"}
COMMANDS = {"archive": events_pb2.TASK_COMMAND_ARCHIVE, "kill": events_pb2.TASK_COMMAND_KILL}


async def request(
    deps: Deps, name: str, command: str, reason: str, *, authorize: bool = True
) -> tuple[Task, list[Session]]:
    """Move the task to the command's first status and enqueue the flow; idempotent for a task
    already ending or ended that way. Errors: NotFound; FailedPrecondition (`TASK_ARCHIVED`) to kill
    an archived task (its sandbox is gone and its record is final; a kill during the archive still
    takes over, so a stuck archive can be forced)."""
    org, task_id = names.task(name)
    if authorize:
        await deps.membership.require(f"organizations/{org}")
    from services.task.usecases.sessions import _task_locked

    async with deps.db.transaction() as session:
        task = await _task_locked(session, org, task_id)
        if task.status in (FINAL_STATUS[command], FIRST_STATUS[command]) or task.status.startswith(
            f"{command}_"
        ):
            return task, await queries.list_sessions(session, task_id=task_id)
        if task.ended and command == "archive":  # a killed task stays killed
            return task, await queries.list_sessions(session, task_id=task_id)
        if task.status == FINAL_STATUS["archive"]:
            raise FailedPrecondition(
                f"{task.name} is archived; an archived task cannot be killed", reason="TASK_ARCHIVED"
            )
        previous = task.status
        task.status = FIRST_STATUS[command]
        sessions = await task_changed(
            session,
            deps,
            task,
            previous_status=previous,
            audits=[Audit(f"task.{command}.requested", reason=reason)],
        )
        await deps.outbox.enqueue(
            session,
            queue=deps.queue("command"),
            message=events_pb2.RunTaskCommand(name=task.name, command=COMMANDS[command], reason=reason),
        )
    return task, sessions


async def run(deps: Deps, name: str, command: str, reason: str) -> None:
    """Background: stop sessions / destroy the sandbox, then mark the task archived or killed."""
    _, task_id = names.task(name)
    async with deps.db.snapshot() as session:
        task = await queries.get_task(session, task_id=task_id)
        sessions = await queries.list_sessions(session, task_id=task_id, include_closed=False) if task else []
    if task is None or not task.status.startswith(f"{command}_"):
        return
    if command == "archive":
        for s in sessions:
            if s.status == "running" and s.sandbox_session:
                for m in await _open_messages(deps, s.id):
                    try:
                        await deps.sandbox.cancel_turn(f"{s.sandbox_session}/turns/{m}")
                    except FoundryError as exc:
                        if exc.retryable:
                            raise
        await _advance(deps, task_id, "archive_release_sandbox")
    if task.sandbox_state:
        try:
            await deps.sandbox.destroy(
                task.sandbox_name,
                f"task {command}: {reason}" if reason else f"task {command}",
                deadline=deps.step_timeout,
            )
        except FoundryError as exc:
            if exc.retryable or exc.reason not in ("NOT_FOUND", "SANDBOX_NOT_FOUND"):
                if exc.retryable:
                    raise
                log.warning("sandbox_destroy_failed", task=name, error=exc.message)
    await _advance(deps, task_id, f"{command}_finalize" if command == "kill" else "archive_finalize")
    await _advance(deps, task_id, FINAL_STATUS[command], final=True, reason=reason)


async def _open_messages(deps: Deps, session_id: str) -> list[str]:
    async with deps.db.snapshot() as session:
        return [m.id for m in await queries.open_messages(session, session_id=session_id)]


async def _advance(deps: Deps, task_id: str, status: str, *, final: bool = False, reason: str = "") -> None:
    async with deps.db.transaction() as session:
        task = await queries.get_task(session, task_id=task_id, lock=True)
        if task is None or task.status == status or task.ended:
            return
        previous = task.status
        task.status = status
        audits = []
        changed: list[Session] = []
        if final:
            at = now()
            task.ended_at = at
            task.sandbox_state = 6 if task.sandbox_state else 0  # SANDBOX_STATE_DESTROYED
            kind = "task.archive" if status == "archived" else "task.kill"
            audits.append(Audit(kind, reason=reason))
            for s in await queries.list_sessions(session, task_id=task_id, include_closed=False):
                if s.status == "running":
                    s.status, s.current_turn, s.thinking_since, s.updated_at = "idle", "", None, at
                    await queries.update_session(session, row=s)
                    changed.append(s)
        await task_changed(
            session, deps, task, previous_status=previous, audits=audits, changed_sessions=changed
        )


async def archive_on_branch(deps: Deps, *, repository: str, branch: str, reason: str) -> None:
    """Archive the live task owning `branch` of `repository`, if any (pull request closed or merged)."""
    async with deps.db.snapshot() as session:
        task = await queries.find_task_by_branch(session, repository=repository, branch=branch)
    if task is not None and not task.ended:
        await request(deps, task.name, "archive", reason or "pull request closed", authorize=False)


async def resume(deps: Deps) -> int:
    """Re-enqueue the flows of tasks left mid-archive or mid-kill (start-up)."""
    async with deps.db.transaction() as session:
        rows = await queries.tasks_in_commands(session)
        for task in rows:
            command = "archive" if task.status.startswith("archive_") else "kill"
            await deps.outbox.enqueue(
                session,
                queue=deps.queue("command"),
                message=events_pb2.RunTaskCommand(
                    name=task.name, command=COMMANDS[command], reason="resumed"
                ),
            )
    return len(rows)
