"""TaskService gRPC servicer: decode → one use case → encode."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from foundry.task.v1 import task_pb2
from foundry.task.v1 import task_service_pb2 as pb
from foundry.task.v1 import task_service_pb2_grpc as pb_grpc

from services.platform.watch import WatchHub
from services.task import convert
from services.task.api.detail_cache import DetailResponses
from services.task.api.watch import watch_session, watch_task, watch_user_task_states
from services.task.domain import names
from services.task.domain.errors import TaskNotFound, invalid
from services.task.domain.models import Session, Task
from services.task.store.queries import TaskDetail
from services.task.usecases import (
    commands,
    file_reverts,
    materialize,
    permissions,
    publish,
    session_commands,
    user_state,
)
from services.task.usecases import sessions as session_ops
from services.task.usecases import tasks as task_ops
from services.task.usecases.deps import Deps

Ctx = grpc.aio.ServicerContext[Any, Any]


def _task(
    row: Task, sessions: Sequence[Session], *, full: bool = True, unread: frozenset[str] = frozenset()
) -> task_pb2.Task:
    return convert.task(row, sessions, status=row.status, full=full, unread=unread)


def _detail_response(detail: TaskDetail, full: bool) -> pb.GetTaskResponse:
    row, sessions, unread = detail.records()
    return pb.GetTaskResponse(task=_task(row, sessions, full=full, unread=unread))


class TaskServicer(pb_grpc.TaskServiceServicer):
    """Implements foundry.task.v1.TaskService."""

    def __init__(self, deps: Deps, hub: WatchHub) -> None:
        self.deps = deps
        self.hub = hub
        self._details = DetailResponses(_detail_response)

    async def CreateTask(self, request: pb.CreateTaskRequest, context: Ctx) -> pb.CreateTaskResponse:
        t = request.task
        new = task_ops.validate_new_task(
            parent=request.parent,
            repository=t.repository,
            prompt=t.prompt,
            title=t.title,
            branch=t.branch,
            on_existing_branch=request.on_existing_branch,
            agent=request.agent,
            model=request.model,
            request_id=request.request_id,
        )
        row, sessions = await task_ops.create_task(self.deps, new)
        return pb.CreateTaskResponse(task=_task(row, sessions))

    async def _first_use(self, name: str, exc: TaskNotFound) -> None:
        """After a NOT_FOUND on `name`: materialize it if it is a virtual task, else re-raise."""
        if not await materialize.on_first_use(self.deps, name):
            raise exc

    async def GetTask(self, request: pb.GetTaskRequest, context: Ctx) -> pb.GetTaskResponse:
        try:
            detail = await task_ops.load_detail(self.deps, request.name)
        except TaskNotFound as exc:
            await self._first_use(request.name, exc)
            detail = await task_ops.load_detail(self.deps, request.name)
        return self._details.response(request.name, detail, full=request.view != task_pb2.TASK_VIEW_BASIC)

    async def ListTasks(self, request: pb.ListTasksRequest, context: Ctx) -> pb.ListTasksResponse:
        rows, token = await task_ops.list_tasks(
            self.deps,
            parent=request.parent,
            repository=request.repository,
            show_ended=request.show_ended,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        full = request.view == task_pb2.TASK_VIEW_FULL
        return pb.ListTasksResponse(tasks=[_task(t, s, full=full) for t, s in rows], next_page_token=token)

    async def WatchTask(
        self, request: pb.WatchTaskRequest, context: Ctx
    ) -> AsyncIterator[pb.WatchTaskResponse]:
        def stream() -> AsyncIterator[pb.WatchTaskResponse]:
            return watch_task(
                self.deps,
                self.hub,
                request.name,
                request.resume_token,
                lambda e: pb.WatchTaskResponse(event=e),
            )

        responses = stream()
        try:
            first = await anext(responses)
        except TaskNotFound as exc:
            await self._first_use(request.name, exc)
            responses = stream()
            first = await anext(responses)
        yield first
        async for response in responses:
            yield response

    async def MaterializeTask(
        self, request: pb.MaterializeTaskRequest, context: Ctx
    ) -> pb.MaterializeTaskResponse:
        row, sessions = await materialize.materialize(
            self.deps, request.name, agent=request.agent, model=request.model
        )
        return pb.MaterializeTaskResponse(task=_task(row, sessions))

    async def RenameTask(self, request: pb.RenameTaskRequest, context: Ctx) -> pb.RenameTaskResponse:
        row, sessions = await task_ops.rename_task(self.deps, request.name, request.title)
        return pb.RenameTaskResponse(task=_task(row, sessions))

    async def SetTaskOwner(self, request: pb.SetTaskOwnerRequest, context: Ctx) -> pb.SetTaskOwnerResponse:
        row, sessions = await task_ops.set_owner(self.deps, request.name, request.user)
        return pb.SetTaskOwnerResponse(task=_task(row, sessions))

    async def ArchiveTask(self, request: pb.ArchiveTaskRequest, context: Ctx) -> pb.ArchiveTaskResponse:
        row, sessions = await commands.request(self.deps, request.name, "archive", request.reason)
        return pb.ArchiveTaskResponse(task=_task(row, sessions))

    async def KillTask(self, request: pb.KillTaskRequest, context: Ctx) -> pb.KillTaskResponse:
        row, sessions = await commands.request(self.deps, request.name, "kill", request.reason)
        return pb.KillTaskResponse(task=_task(row, sessions))

    async def PushTask(self, request: pb.PushTaskRequest, context: Ctx) -> pb.PushTaskResponse:
        req = publish.validate_push(name=request.name, reason=request.reason, request_id=request.request_id)
        row, sessions = await publish.request(self.deps, req)
        return pb.PushTaskResponse(task=_task(row, sessions))

    async def PublishPullRequest(
        self, request: pb.PublishPullRequestRequest, context: Ctx
    ) -> pb.PublishPullRequestResponse:
        req = publish.validate(
            name=request.name,
            title=request.title,
            body=request.body,
            draft=request.draft,
            request_id=request.request_id,
        )
        row, sessions = await publish.request(self.deps, req)
        return pb.PublishPullRequestResponse(task=_task(row, sessions))

    async def RevertFile(self, request: pb.RevertFileRequest, context: Ctx) -> pb.RevertFileResponse:
        row, sessions = await file_reverts.request(self.deps, request.name, request.path, request.request_id)
        return pb.RevertFileResponse(task=_task(row, sessions))

    async def CreateSession(self, request: pb.CreateSessionRequest, context: Ctx) -> pb.CreateSessionResponse:
        s = request.session

        async def create() -> Session:
            return await session_ops.create_session(
                self.deps,
                parent=request.parent,
                display_name=s.display_name,
                agent=s.agent,
                model=s.model,
                request_id=request.request_id,
            )

        try:
            row = await create()
        except TaskNotFound as exc:
            await self._first_use(request.parent, exc)
            row = await create()
        return pb.CreateSessionResponse(session=convert.session(row))

    async def GetSession(self, request: pb.GetSessionRequest, context: Ctx) -> pb.GetSessionResponse:
        row, unread = await session_ops.get_session(self.deps, request.name)
        return pb.GetSessionResponse(session=convert.session(row, unread=unread))

    async def ListSessions(self, request: pb.ListSessionsRequest, context: Ctx) -> pb.ListSessionsResponse:
        rows, token = await session_ops.list_sessions(
            self.deps,
            parent=request.parent,
            show_closed=request.show_closed,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListSessionsResponse(sessions=[convert.session(r) for r in rows], next_page_token=token)

    async def WatchSession(
        self, request: pb.WatchSessionRequest, context: Ctx
    ) -> AsyncIterator[pb.WatchSessionResponse]:
        async for response in watch_session(
            self.deps,
            self.hub,
            request.name,
            request.resume_token,
            lambda e: pb.WatchSessionResponse(event=e),
        ):
            yield response

    async def WatchUserTaskStates(
        self, request: pb.WatchUserTaskStatesRequest, context: Ctx
    ) -> AsyncIterator[pb.WatchUserTaskStatesResponse]:
        async for response in watch_user_task_states(
            self.deps,
            self.hub,
            request.parent,
            request.resume_token,
            lambda e: pb.WatchUserTaskStatesResponse(event=e),
        ):
            yield response

    async def SendMessage(self, request: pb.SendMessageRequest, context: Ctx) -> pb.SendMessageResponse:
        row, message = await session_ops.send_message(
            self.deps,
            name=request.name,
            text=request.text,
            attachments=convert.attachments_from_pb(request.attachments),
            request_id=request.request_id,
        )
        return pb.SendMessageResponse(
            session=convert.session(row), message=f"{row.name}/messages/{message.id}"
        )

    async def AnswerPermissionRequest(
        self, request: pb.AnswerPermissionRequestRequest, context: Ctx
    ) -> pb.AnswerPermissionRequestResponse:
        answered, row, message = await permissions.answer_permission_request(
            self.deps, request.name, request.outcome
        )
        return pb.AnswerPermissionRequestResponse(
            permission_request=answered, session=convert.session(row), message=message
        )

    async def StopSession(self, request: pb.StopSessionRequest, context: Ctx) -> pb.StopSessionResponse:
        return pb.StopSessionResponse(
            session=convert.session(await session_commands.stop_session(self.deps, request.name))
        )

    async def CloseSession(self, request: pb.CloseSessionRequest, context: Ctx) -> pb.CloseSessionResponse:
        return pb.CloseSessionResponse(
            session=convert.session(await session_commands.close_session(self.deps, request.name))
        )

    async def RenameSession(self, request: pb.RenameSessionRequest, context: Ctx) -> pb.RenameSessionResponse:
        row = await session_ops.rename_session(self.deps, request.name, request.display_name)
        return pb.RenameSessionResponse(session=convert.session(row))

    async def ChangeModel(self, request: pb.ChangeModelRequest, context: Ctx) -> pb.ChangeModelResponse:
        return pb.ChangeModelResponse(
            session=convert.session(
                await session_commands.change_model(self.deps, request.name, request.model)
            )
        )

    async def GetUserTaskState(
        self, request: pb.GetUserTaskStateRequest, context: Ctx
    ) -> pb.GetUserTaskStateResponse:
        row, state = await user_state.get(self.deps, request.name)
        return pb.GetUserTaskStateResponse(user_task_state=convert.user_task_state(row, state))

    async def UpdateUserTaskState(
        self, request: pb.UpdateUserTaskStateRequest, context: Ctx
    ) -> pb.UpdateUserTaskStateResponse:
        paths = set(request.update_mask.paths)
        if not paths <= {"active_session"} or not paths:
            raise invalid("update_mask", "supports exactly `active_session`")
        s = request.user_task_state
        row, state = await user_state.set_active(self.deps, s.name, s.active_session)
        return pb.UpdateUserTaskStateResponse(user_task_state=convert.user_task_state(row, state))

    async def UpdateUserSessionState(
        self, request: pb.UpdateUserSessionStateRequest, context: Ctx
    ) -> pb.UpdateUserSessionStateResponse:
        paths = set(request.update_mask.paths)
        allowed = {"unread", "draft", "draft.text", "draft.attachments"}
        if not paths or not paths <= allowed:
            raise invalid("update_mask", "supports `unread` and `draft`")
        s = request.user_session_state
        draft_all = "draft" in paths
        kwargs: dict[str, Any] = {
            "unread": s.unread if "unread" in paths else None,
            "draft_text": s.draft.text if draft_all or "draft.text" in paths else None,
            "draft_attachments": convert.attachments_from_pb(s.draft.attachments)
            if draft_all or "draft.attachments" in paths
            else None,
        }
        row, own = await user_state.update_session_state(self.deps, s.name, **kwargs)
        return pb.UpdateUserSessionStateResponse(user_session_state=convert.user_session_state(row, own))


__all__ = ["TaskServicer", "names"]
