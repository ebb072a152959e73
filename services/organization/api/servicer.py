"""OrganizationService over gRPC: decode the request, call one use case, encode the response.

Errors are raised as FoundryError subclasses by the use cases and mapped by the interceptor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from foundry.organization.v1 import organization_service_pb2 as pb
from foundry.organization.v1 import organization_service_pb2_grpc as pb_grpc

from services.organization.usecases.accounts import Accounts
from services.organization.usecases.audit import AuditLog
from services.organization.usecases.model_credentials import ModelCredentials
from services.organization.usecases.organizations import Organizations
from services.organization.usecases.settings import SettingsWrites
from services.organization.usecases.summary import Summaries
from services.organization.usecases.task_index import TaskIndex

Ctx = Any  # grpc.aio.ServicerContext


class OrganizationServicer(pb_grpc.OrganizationServiceServicer):
    def __init__(
        self,
        *,
        accounts: Accounts,
        organizations: Organizations,
        task_index: TaskIndex,
        summaries: Summaries,
        audit: AuditLog,
        settings: SettingsWrites,
        model_credentials: ModelCredentials,
    ) -> None:
        self.accounts = accounts
        self.organizations = organizations
        self.task_index = task_index
        self.summaries = summaries
        self.audit = audit
        self.settings = settings
        self.model_credentials = model_credentials

    # -- app shell and sign-in --------------------------------------------------------------------

    async def GetAppSnapshot(
        self, request: pb.GetAppSnapshotRequest, context: Ctx
    ) -> pb.GetAppSnapshotResponse:
        snapshot, token = await self.accounts.get_app_snapshot(request.name, request.auth_session)
        return pb.GetAppSnapshotResponse(app_snapshot=snapshot, resume_token=token)

    async def WatchApp(self, request: pb.WatchAppRequest, context: Ctx) -> AsyncIterator[pb.WatchAppResponse]:
        async for response in self.accounts.watch_app(
            request.name,
            request.auth_session,
            request.resume_token,
            lambda event: pb.WatchAppResponse(event=event),
        ):
            yield response

    async def SelectOrganization(
        self, request: pb.SelectOrganizationRequest, context: Ctx
    ) -> pb.SelectOrganizationResponse:
        snapshot = await self.accounts.select_organization(
            auth_session=request.auth_session, organization=request.organization
        )
        return pb.SelectOrganizationResponse(app_snapshot=snapshot)

    async def SignInLocal(self, request: pb.SignInLocalRequest, context: Ctx) -> pb.SignInLocalResponse:
        user, session = await self.accounts.sign_in_local(
            login=request.login,
            display_name=request.display_name,
            email=request.email,
            user_agent=request.user_agent,
        )
        return pb.SignInLocalResponse(user=user, auth_session=session)

    async def SignInWithGithub(
        self, request: pb.SignInWithGithubRequest, context: Ctx
    ) -> pb.SignInWithGithubResponse:
        user, session = await self.accounts.sign_in_with_github(
            github_account_id=request.github_account_id,
            login=request.login,
            display_name=request.display_name,
            email=request.email,
            avatar_url=request.avatar_url,
            user_agent=request.user_agent,
        )
        return pb.SignInWithGithubResponse(user=user, auth_session=session)

    async def SignOut(self, request: pb.SignOutRequest, context: Ctx) -> pb.SignOutResponse:
        return pb.SignOutResponse(auth_session=await self.accounts.sign_out(request.auth_session))

    async def GetAuthSession(
        self, request: pb.GetAuthSessionRequest, context: Ctx
    ) -> pb.GetAuthSessionResponse:
        session, user = await self.accounts.get_auth_session(request.name)
        return pb.GetAuthSessionResponse(auth_session=session, user=user)

    async def GetUser(self, request: pb.GetUserRequest, context: Ctx) -> pb.GetUserResponse:
        return pb.GetUserResponse(user=await self.accounts.get_user(request.name))

    async def UpdateUser(self, request: pb.UpdateUserRequest, context: Ctx) -> pb.UpdateUserResponse:
        user = await self.settings.update_user(request.user, list(request.update_mask.paths))
        return pb.UpdateUserResponse(user=user)

    # -- model API keys (write-only for users; values only to services) ---------------------------

    async def SetModelCredential(
        self, request: pb.SetModelCredentialRequest, context: Ctx
    ) -> pb.SetModelCredentialResponse:
        credential = await self.model_credentials.set(request.parent, request.variable, request.value)
        return pb.SetModelCredentialResponse(model_credential=credential)

    async def DeleteModelCredential(
        self, request: pb.DeleteModelCredentialRequest, context: Ctx
    ) -> pb.DeleteModelCredentialResponse:
        await self.model_credentials.delete(request.name)
        return pb.DeleteModelCredentialResponse()

    async def ListModelCredentials(
        self, request: pb.ListModelCredentialsRequest, context: Ctx
    ) -> pb.ListModelCredentialsResponse:
        credentials = await self.model_credentials.list(request.parent)
        return pb.ListModelCredentialsResponse(model_credentials=credentials)

    async def ResolveModelCredentials(
        self, request: pb.ResolveModelCredentialsRequest, context: Ctx
    ) -> pb.ResolveModelCredentialsResponse:
        environment = await self.model_credentials.resolve(request.organization)
        return pb.ResolveModelCredentialsResponse(environment=environment)

    # -- organizations and members ----------------------------------------------------------------

    async def GetOrganization(
        self, request: pb.GetOrganizationRequest, context: Ctx
    ) -> pb.GetOrganizationResponse:
        return pb.GetOrganizationResponse(organization=await self.organizations.get(request.name))

    async def ListOrganizations(
        self, request: pb.ListOrganizationsRequest, context: Ctx
    ) -> pb.ListOrganizationsResponse:
        orgs, token = await self.organizations.list_organizations(
            page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListOrganizationsResponse(organizations=orgs, next_page_token=token)

    async def ConnectLocalOrganization(
        self, request: pb.ConnectLocalOrganizationRequest, context: Ctx
    ) -> pb.ConnectLocalOrganizationResponse:
        org = await self.organizations.connect_local(
            organization_id=request.organization_id,
            display_name=request.display_name,
            root_path=request.root_path,
            request_id=request.request_id,
        )
        return pb.ConnectLocalOrganizationResponse(organization=org)

    async def UpdateOrganization(
        self, request: pb.UpdateOrganizationRequest, context: Ctx
    ) -> pb.UpdateOrganizationResponse:
        org = await self.settings.update_organization(request.organization, list(request.update_mask.paths))
        return pb.UpdateOrganizationResponse(organization=org)

    async def ListMembers(self, request: pb.ListMembersRequest, context: Ctx) -> pb.ListMembersResponse:
        members, token = await self.organizations.list_members(
            parent=request.parent, page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListMembersResponse(members=members, next_page_token=token)

    async def CreateMember(self, request: pb.CreateMemberRequest, context: Ctx) -> pb.CreateMemberResponse:
        member = await self.organizations.create_member(
            parent=request.parent, user=request.member.user, role=int(request.member.role)
        )
        return pb.CreateMemberResponse(member=member)

    async def GetMember(self, request: pb.GetMemberRequest, context: Ctx) -> pb.GetMemberResponse:
        return pb.GetMemberResponse(member=await self.organizations.get_member(request.name))

    async def CheckMembership(
        self, request: pb.CheckMembershipRequest, context: Ctx
    ) -> pb.CheckMembershipResponse:
        member, role = await self.organizations.check_membership(
            organization=request.organization, user=request.user
        )
        return pb.CheckMembershipResponse(member=member, role=role)  # type: ignore[arg-type]

    # -- task index -------------------------------------------------------------------------------

    async def ReserveTaskBranch(
        self, request: pb.ReserveTaskBranchRequest, context: Ctx
    ) -> pb.ReserveTaskBranchResponse:
        entry = await self.task_index.reserve(
            parent=request.parent,
            task_id=request.task_id,
            repository=request.repository,
            branch=request.branch,
            mode=request.mode,
            title=request.title,
        )
        return pb.ReserveTaskBranchResponse(task_index_entry=entry)

    async def ReleaseTaskBranch(
        self, request: pb.ReleaseTaskBranchRequest, context: Ctx
    ) -> pb.ReleaseTaskBranchResponse:
        await self.task_index.release(request.name)
        return pb.ReleaseTaskBranchResponse()

    async def GetTaskIndexEntry(
        self, request: pb.GetTaskIndexEntryRequest, context: Ctx
    ) -> pb.GetTaskIndexEntryResponse:
        return pb.GetTaskIndexEntryResponse(task_index_entry=await self.task_index.get(request.name))

    async def ListTaskIndexEntries(
        self, request: pb.ListTaskIndexEntriesRequest, context: Ctx
    ) -> pb.ListTaskIndexEntriesResponse:
        entries, token = await self.task_index.list_entries(
            parent=request.parent,
            repository=request.repository,
            branch=request.branch,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListTaskIndexEntriesResponse(task_index_entries=entries, next_page_token=token)

    # -- summary projection and audit log ---------------------------------------------------------

    async def GetOrganizationSummary(
        self, request: pb.GetOrganizationSummaryRequest, context: Ctx
    ) -> pb.GetOrganizationSummaryResponse:
        summary, token = await self.summaries.get(request.name)
        return pb.GetOrganizationSummaryResponse(organization_summary=summary, resume_token=token)

    async def WatchOrganizationSummary(
        self, request: pb.WatchOrganizationSummaryRequest, context: Ctx
    ) -> AsyncIterator[pb.WatchOrganizationSummaryResponse]:
        async for response in self.summaries.watch(
            request.name, request.resume_token, lambda event: pb.WatchOrganizationSummaryResponse(event=event)
        ):
            yield response

    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Ctx
    ) -> pb.ListAuditEventsResponse:
        events, token = await self.audit.list_events(
            parent=request.parent,
            repository=request.repository,
            branch=request.branch,
            task=request.task,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListAuditEventsResponse(audit_events=events, next_page_token=token)
