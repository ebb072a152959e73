"""Queue handlers of the task service. Work items carry names only; each handler reads durable rows
and is idempotent (stages keyed by the task's stage, sandbox commands keyed by task/session/turn
ids), so a redelivery has no second effect."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from foundry.github_data.v1 import events_pb2 as gd_events
from foundry.sandbox.v1 import events_pb2 as sb_events
from foundry.task.v1 import events_pb2

from services.platform.messaging.broker import Message
from services.platform.messaging.consumer import HandlerContext
from services.task.usecases import (
    commands,
    file_reverts,
    provisioning,
    publish,
    sandbox_events,
    session_commands,
    sessions,
)
from services.task.usecases.deps import Deps

Handler = Callable[[Message, HandlerContext], Awaitable[None]]

SANDBOX_KEYS = ("sandbox.session.turn_completed", "sandbox.git_state.updated", "sandbox.session.changed")
GITHUB_KEYS = ("github_data.pull_request.changed", "github_data.pull_request.removed")


def provision(deps: Deps) -> Handler:
    async def handle(message: Message, ctx: HandlerContext) -> None:
        item = events_pb2.ProvisionTask.FromString(message.body)
        max_attempts = deps.settings.messaging.max_attempts
        await provisioning.run_next_step(
            deps, item.name, last_attempt=ctx.attempt >= max_attempts, stopping=lambda: ctx.stopping
        )

    return handle


def ensure_session(deps: Deps) -> Handler:
    async def handle(message: Message, ctx: HandlerContext) -> None:
        await sessions.ensure_session(deps, events_pb2.EnsureSession.FromString(message.body).name)

    return handle


def deliver_message(deps: Deps) -> Handler:
    async def handle(message: Message, ctx: HandlerContext) -> None:
        await sessions.deliver_message(deps, events_pb2.DeliverMessage.FromString(message.body).name)

    return handle


def session_command(deps: Deps) -> Handler:
    async def handle(message: Message, ctx: HandlerContext) -> None:
        await session_commands.run(deps, events_pb2.RunSessionCommand.FromString(message.body))

    return handle


def revert_file(deps: Deps) -> Handler:
    async def handle(message: Message, ctx: HandlerContext) -> None:
        last = ctx.attempt >= deps.settings.messaging.max_attempts
        await file_reverts.run(deps, events_pb2.RevertTaskFile.FromString(message.body), last_attempt=last)

    return handle


def command(deps: Deps) -> Handler:
    async def handle(message: Message, ctx: HandlerContext) -> None:
        item = events_pb2.RunTaskCommand.FromString(message.body)
        if item.command == events_pb2.TASK_COMMAND_PUBLISH_PULL_REQUEST:
            last = ctx.attempt >= deps.settings.messaging.max_attempts
            await publish.run(deps, item.name, last_attempt=last)
            return
        kind = "archive" if item.command == events_pb2.TASK_COMMAND_ARCHIVE else "kill"
        await commands.run(deps, item.name, kind, item.reason)

    return handle


def archive_on_branch(deps: Deps) -> Handler:
    async def handle(message: Message, ctx: HandlerContext) -> None:
        item = events_pb2.ArchiveTaskOnBranch.FromString(message.body)
        await commands.archive_on_branch(
            deps, repository=item.repository, branch=item.branch, reason=item.reason
        )

    return handle


def sandbox(deps: Deps) -> Handler:
    """Sandbox events: turn ends, git state, agent-session failures."""

    async def handle(message: Message, ctx: HandlerContext) -> None:
        key = message.routing_key
        if key == "sandbox.session.turn_completed":
            await sandbox_events.on_turn_completed(deps, sb_events.TurnCompleted.FromString(message.body))
        elif key == "sandbox.git_state.updated":
            await sandbox_events.on_git_state(deps, sb_events.GitStateUpdated.FromString(message.body))
        elif key == "sandbox.session.changed":
            await sandbox_events.on_session_changed(
                deps, sb_events.AgentSessionChanged.FromString(message.body)
            )

    return handle


def github(deps: Deps) -> Handler:
    """Pull-request events: the summary (and its final state) on the task owning the head branch."""

    async def handle(message: Message, ctx: HandlerContext) -> None:
        if message.routing_key == "github_data.pull_request.changed":
            await sandbox_events.on_pull_request_changed(
                deps, gd_events.PullRequestChanged.FromString(message.body)
            )
        elif message.routing_key == "github_data.pull_request.removed":
            await sandbox_events.on_pull_request_removed(
                deps, gd_events.PullRequestRemoved.FromString(message.body)
            )

    return handle
