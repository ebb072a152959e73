"""`SandboxService` over gRPC: decode → one domain call → encode. Errors are domain exceptions, mapped
by the platform's first interceptor; every organization-scoped call checks membership first.

The commands that run git or a provider (create/destroy a sandbox, prepare, start an agent or a
session, prompt, cancel, set the model, close, refresh git state, revert, push) are the execution
steps of the task service's queue workers (ARCHITECTURE flow 2): service callers only
(`require_service`, PERMISSION_DENIED `SERVICE_ONLY` for a user). A user's request reaches them only
as a command the task service records and enqueues. Users read here directly (sandboxes, git state,
files, transcripts) and drive their own terminal (processes)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from foundry.sandbox.v1 import process_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as pb
from foundry.sandbox.v1 import sandbox_service_pb2_grpc as pb_grpc
from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncSession

from services.platform import context as request_context
from services.platform.authz import Membership, require_service
from services.platform.watch import WatchHub
from services.sandbox import convert
from services.sandbox.domain import names
from services.sandbox.domain.models import SandboxKey
from services.sandbox.store.logs import LogRecords, events_scope, output_chunk, output_scope, processes_scope
from services.sandbox.usecases.checkout import Checkouts
from services.sandbox.usecases.permissions import Permissions
from services.sandbox.usecases.processes import Processes
from services.sandbox.usecases.sandboxes import Sandboxes
from services.sandbox.usecases.sessions import Sessions

Context = Any  # grpc.aio.ServicerContext


def _org(name: str) -> str:
    return f"organizations/{name.split('/')[1]}"


class SandboxServicer(pb_grpc.SandboxServiceServicer):
    """Thin adapter from the generated service to the domain use cases."""

    def __init__(
        self,
        *,
        sandboxes: Sandboxes,
        sessions: Sessions,
        checkouts: Checkouts,
        processes: Processes,
        logs: LogRecords,
        hub: WatchHub,
        membership: Membership,
        permissions: Permissions,
    ) -> None:
        self.sandboxes = sandboxes
        self.sessions = sessions
        self.checkouts = checkouts
        self.processes = processes
        self.logs = logs
        self.hub = hub
        self.membership = membership
        self.permissions = permissions

    async def _member(self, name: str) -> None:
        await self.membership.require(_org(name))

    def _environment(
        self, key: SandboxKey, environment: Mapping[str, str], *, keep_when_empty: bool = False
    ) -> None:
        """Keep the organization's model API keys the task service sends for the sandbox's agents.
        Only a service may send them (a user never names an agent's environment); a call without
        them from a user changes nothing."""
        caller = request_context.caller()
        if caller is not None and caller.is_service:
            if environment or not keep_when_empty:
                self.sessions.use_environment(key, environment)
        elif environment:
            require_service("an agent environment")

    # -- agents and sandboxes --------------------------------------------------------------------

    async def ListAgents(self, request: pb.ListAgentsRequest, context: Context) -> pb.ListAgentsResponse:
        agents, token = self.sessions.list_agents_page(
            page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListAgentsResponse(agents=[convert.agent(a) for a in agents], next_page_token=token)

    async def CreateSandbox(
        self, request: pb.CreateSandboxRequest, context: Context
    ) -> pb.CreateSandboxResponse:
        names.organization(request.parent)
        key = names.sandbox(f"{request.parent}/sandboxes/{request.sandbox_id}", "sandbox_id")
        require_service("CreateSandbox")
        await self.membership.require(request.parent)
        sandbox, created = await self.sandboxes.create(
            key,
            task=request.sandbox.task,
            repository=request.sandbox.repository,
            provider=request.sandbox.provider,
            egress=request.egress_policy,
        )
        return pb.CreateSandboxResponse(sandbox=convert.sandbox(sandbox), created=created)

    async def GetSandbox(self, request: pb.GetSandboxRequest, context: Context) -> pb.GetSandboxResponse:
        key = names.sandbox(request.name)
        await self._member(request.name)
        return pb.GetSandboxResponse(sandbox=convert.sandbox(await self.sandboxes.get(key)))

    async def ListSandboxes(
        self, request: pb.ListSandboxesRequest, context: Context
    ) -> pb.ListSandboxesResponse:
        organization = names.organization(request.parent)
        await self.membership.require(request.parent)
        items, token = await self.sandboxes.list_page(
            organization,
            show_destroyed=request.show_destroyed,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListSandboxesResponse(sandboxes=[convert.sandbox(s) for s in items], next_page_token=token)

    async def DestroySandbox(
        self, request: pb.DestroySandboxRequest, context: Context
    ) -> pb.DestroySandboxResponse:
        key = names.sandbox(request.name)
        require_service("DestroySandbox")
        await self._member(request.name)
        return pb.DestroySandboxResponse(
            sandbox=convert.sandbox(await self.sandboxes.destroy(key, request.reason))
        )

    async def PrepareRepository(
        self, request: pb.PrepareRepositoryRequest, context: Context
    ) -> pb.PrepareRepositoryResponse:
        key = names.sandbox(request.name)
        require_service("PrepareRepository")  # its clone URL may name any path on the host
        sandbox = await self.sandboxes.prepare(
            key,
            clone_url=request.clone_url,
            branch=request.branch,
            base_branch=request.base_branch,
            token=request.access_token,
            user_name=request.git_user_name,
            user_email=request.git_user_email,
        )
        return pb.PrepareRepositoryResponse(sandbox=convert.sandbox(sandbox))

    # -- agent sessions ----------------------------------------------------------------------------

    async def StartAgent(self, request: pb.StartAgentRequest, context: Context) -> pb.StartAgentResponse:
        key = names.sandbox(request.parent, "parent")
        agent = names.agent(request.agent)
        require_service("StartAgent")
        self._environment(key, request.environment)  # refused before anything else for a user
        await self._member(request.parent)
        connection = await self.sessions.start_agent(key, agent)
        return pb.StartAgentResponse(agent_connection=convert.agent_connection(connection))

    async def StartAgentSession(
        self, request: pb.StartAgentSessionRequest, context: Context
    ) -> pb.StartAgentSessionResponse:
        key = names.sandbox(request.parent, "parent")
        agent = names.agent(request.agent)
        require_service("StartAgentSession")
        self._environment(key, request.environment)  # refused before anything else for a user
        await self._member(request.parent)
        session = await self.sessions.start_session(
            key,
            request.session_id,
            agent=agent,
            model=request.model,
            mode=request.mode,
            policy=convert.permission_policy(request.permission_policy),
        )
        return pb.StartAgentSessionResponse(agent_session=convert.agent_session(session))

    async def GetAgentSession(
        self, request: pb.GetAgentSessionRequest, context: Context
    ) -> pb.GetAgentSessionResponse:
        key = names.session(request.name)
        await self._member(request.name)
        return pb.GetAgentSessionResponse(agent_session=convert.agent_session(await self.sessions.get(key)))

    async def PromptSession(
        self, request: pb.PromptSessionRequest, context: Context
    ) -> pb.PromptSessionResponse:
        key = names.session(request.name)
        require_service("PromptSession")
        # Empty: the task service could not read them this time; the sandbox keeps the ones it has.
        self._environment(key.sandbox, request.environment, keep_when_empty=True)
        await self._member(request.name)
        turn = await self.sessions.prompt(
            key,
            request.turn_id,
            text=request.text,
            attachments=convert.attachments(request.attachments),
            user=request.user,
            permission_policy=convert.permission_policy(request.permission_policy),
        )
        return pb.PromptSessionResponse(turn=convert.turn(turn))

    async def CancelTurn(self, request: pb.CancelTurnRequest, context: Context) -> pb.CancelTurnResponse:
        key, turn_id = names.turn(request.name)
        require_service("CancelTurn")
        await self._member(request.name)
        return pb.CancelTurnResponse(turn=convert.turn(await self.sessions.cancel_turn(key, turn_id)))

    async def AnswerPermissionRequest(
        self, request: pb.AnswerPermissionRequestRequest, context: Context
    ) -> pb.AnswerPermissionRequestResponse:
        key, request_id = names.permission_request(request.name)
        await self._member(request.name)
        caller = request_context.caller()
        # A user answers as themselves; only a service (the task service) names the user it serves.
        user = (
            request.user
            if caller is not None and caller.is_service
            else f"users/{caller.user_id}"
            if caller
            else ""
        )
        answered = await self.permissions.answer(
            key, request_id, convert.permission_outcome(request.outcome), user=user
        )
        return pb.AnswerPermissionRequestResponse(permission_request=convert.permission_request(answered))

    async def SetAgentSessionModel(
        self, request: pb.SetAgentSessionModelRequest, context: Context
    ) -> pb.SetAgentSessionModelResponse:
        key = names.session(request.name)
        require_service("SetAgentSessionModel")
        await self._member(request.name)
        session = await self.sessions.set_model(key, request.model)
        return pb.SetAgentSessionModelResponse(agent_session=convert.agent_session(session))

    async def CloseAgentSession(
        self, request: pb.CloseAgentSessionRequest, context: Context
    ) -> pb.CloseAgentSessionResponse:
        key = names.session(request.name)
        require_service("CloseAgentSession")
        await self._member(request.name)
        return pb.CloseAgentSessionResponse(
            agent_session=convert.agent_session(await self.sessions.close(key))
        )

    async def ListSessionEvents(
        self, request: pb.ListSessionEventsRequest, context: Context
    ) -> pb.ListSessionEventsResponse:
        key = names.session(request.parent, "parent")
        await self._member(request.parent)
        events, token = await self.sessions.list_events(
            key, after_seq=request.after_seq, page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListSessionEventsResponse(
            session_events=[convert.session_event(e) for e in events], next_page_token=token
        )

    async def WatchSessionEvents(
        self, request: pb.WatchSessionEventsRequest, context: Context
    ) -> AsyncIterator[pb.WatchSessionEventsResponse]:
        key = names.session(request.parent, "parent")
        await self._member(request.parent)
        await self.sessions.get(key)

        async def snapshot(s: AsyncSession) -> Sequence[tuple[str, Message]]:
            return [(e.name, convert.session_event(e)) for e in await self.logs.read_events(s, key)]

        async for response in self.hub.stream(
            events_scope(key),
            resume_token=request.resume_token,
            snapshot=snapshot,
            authorize=lambda: self._member(request.parent),
            wrap=lambda event: pb.WatchSessionEventsResponse(event=event),
        ):
            yield response

    # -- git state ---------------------------------------------------------------------------------

    async def GetGitState(self, request: pb.GetGitStateRequest, context: Context) -> pb.GetGitStateResponse:
        key = names.git_state(request.name)
        await self._member(request.name)
        return pb.GetGitStateResponse(git_state=convert.git_state(await self.checkouts.get_git_state(key)))

    async def RefreshGitState(
        self, request: pb.RefreshGitStateRequest, context: Context
    ) -> pb.RefreshGitStateResponse:
        key = names.git_state(request.name)
        require_service("RefreshGitState")
        await self._member(request.name)
        return pb.RefreshGitStateResponse(git_state=convert.git_state(await self.checkouts.refresh(key)))

    async def RevertFile(self, request: pb.RevertFileRequest, context: Context) -> pb.RevertFileResponse:
        key = names.sandbox(request.name)
        require_service("RevertFile")
        await self._member(request.name)
        return pb.RevertFileResponse(
            git_state=convert.git_state(await self.checkouts.revert_file(key, request.path))
        )

    async def GetFileContent(
        self, request: pb.GetFileContentRequest, context: Context
    ) -> pb.GetFileContentResponse:
        key = names.sandbox(request.name)
        await self._member(request.name)
        file = await self.checkouts.read_file(key, request.path)
        return pb.GetFileContentResponse(
            path=file.path,
            content=file.content,
            size_bytes=file.size,
            truncated=file.truncated,
            binary=file.binary,
        )

    async def PushBranch(self, request: pb.PushBranchRequest, context: Context) -> pb.PushBranchResponse:
        key = names.sandbox(request.name)
        require_service("PushBranch")  # users push through the task service (PushTask)
        branch, head, remote = await self.checkouts.push(
            key,
            token=request.access_token,
            force_with_lease=request.force_with_lease,
            commit_message=request.commit_message,
        )
        return pb.PushBranchResponse(branch=branch, head_commit=head, remote_url=remote)

    # -- processes ---------------------------------------------------------------------------------

    async def CreateProcess(
        self, request: pb.CreateProcessRequest, context: Context
    ) -> pb.CreateProcessResponse:
        key = names.sandbox(request.parent, "parent")
        await self._member(request.parent)
        size = request.terminal_size
        process = await self.processes.create(
            key, convert.process_spec(request.process), request.request_id, (size.rows, size.columns)
        )
        return pb.CreateProcessResponse(process=convert.process(process))

    async def GetProcess(self, request: pb.GetProcessRequest, context: Context) -> pb.GetProcessResponse:
        key, process_id = names.process(request.name)
        await self._member(request.name)
        return pb.GetProcessResponse(process=convert.process(await self.processes.get(key, process_id)))

    async def ListProcesses(
        self, request: pb.ListProcessesRequest, context: Context
    ) -> pb.ListProcessesResponse:
        key = names.sandbox(request.parent, "parent")
        await self._member(request.parent)
        items, token = await self.processes.list_page(
            key, page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListProcessesResponse(processes=[convert.process(p) for p in items], next_page_token=token)

    async def GetProcessLogs(
        self, request: pb.GetProcessLogsRequest, context: Context
    ) -> pb.GetProcessLogsResponse:
        key, process_id = names.process(request.name)
        await self._member(request.name)
        chunks, next_offset, complete = await self.processes.read_logs(
            key,
            process_id,
            offset=request.offset,
            max_bytes=request.max_bytes,
            stream=convert.process_stream(request.stream),
        )
        streams = {
            "stdout": process_pb2.PROCESS_OUTPUT_STREAM_STDOUT,
            "stderr": process_pb2.PROCESS_OUTPUT_STREAM_STDERR,
        }
        return pb.GetProcessLogsResponse(
            chunks=[
                process_pb2.ProcessLogChunk(
                    stream=streams[c.stream],
                    offset=c.offset,
                    data=c.data,
                    capture_time=convert.ts(c.capture_time),
                )
                for c in chunks
            ],
            next_offset=next_offset,
            complete=complete,
        )

    async def StopProcess(self, request: pb.StopProcessRequest, context: Context) -> pb.StopProcessResponse:
        key, process_id = names.process(request.name)
        await self._member(request.name)
        process = await self.processes.stop(key, process_id, request.grace_period_seconds)
        return pb.StopProcessResponse(process=convert.process(process))

    async def KillProcess(self, request: pb.KillProcessRequest, context: Context) -> pb.KillProcessResponse:
        key, process_id = names.process(request.name)
        await self._member(request.name)
        return pb.KillProcessResponse(process=convert.process(await self.processes.kill(key, process_id)))

    async def DeleteProcess(
        self, request: pb.DeleteProcessRequest, context: Context
    ) -> pb.DeleteProcessResponse:
        key, process_id = names.process(request.name)
        await self._member(request.name)
        await self.processes.delete(key, process_id)
        return pb.DeleteProcessResponse()

    async def WatchProcesses(
        self, request: pb.WatchProcessesRequest, context: Context
    ) -> AsyncIterator[pb.WatchProcessesResponse]:
        key = names.sandbox(request.parent, "parent")
        await self._member(request.parent)
        await self.sandboxes.get(key)

        async def snapshot(s: AsyncSession) -> Sequence[tuple[str, Message]]:
            return await self.logs.process_items(s, key)

        async for response in self.hub.stream(
            processes_scope(key),
            resume_token=request.resume_token,
            snapshot=snapshot,
            authorize=lambda: self._member(request.parent),
            wrap=lambda event: pb.WatchProcessesResponse(event=event),
        ):
            yield response

    # -- terminals (tty processes) -----------------------------------------------------------------

    async def WriteProcessInput(
        self, request: pb.WriteProcessInputRequest, context: Context
    ) -> pb.WriteProcessInputResponse:
        key, process_id = names.process(request.name)
        await self._member(request.name)
        await self.processes.write_input(key, process_id, request.data)
        return pb.WriteProcessInputResponse()

    async def ResizeProcess(
        self, request: pb.ResizeProcessRequest, context: Context
    ) -> pb.ResizeProcessResponse:
        key, process_id = names.process(request.name)
        await self._member(request.name)
        size = request.terminal_size
        process = await self.processes.resize(key, process_id, size.rows, size.columns)
        return pb.ResizeProcessResponse(process=convert.process(process))

    async def WatchProcessOutput(
        self, request: pb.WatchProcessOutputRequest, context: Context
    ) -> AsyncIterator[pb.WatchProcessOutputResponse]:
        key, process_id = names.process(request.name)
        await self._member(request.name)
        await self.processes.get(key, process_id)

        async def snapshot(s: AsyncSession) -> Sequence[tuple[str, Message]]:
            items = await self.processes.output_items(key, process_id)
            return [(name, output_chunk(c.offset, c.data, c.capture_time)) for name, c in items]

        async for response in self.hub.stream(
            output_scope(request.name),
            resume_token=request.resume_token,
            snapshot=snapshot,
            authorize=lambda: self._member(request.name),
            wrap=lambda event: pb.WatchProcessOutputResponse(event=event),
        ):
            yield response
