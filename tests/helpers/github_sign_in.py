"""A GitHub sign-in as the gateway's OAuth callback does it: SignInWithGithub on the organization
service (the user and an auth session), then the OAuth token to github-data (SetGithubToken, which
stores it and queues the discovery of the user's accounts)."""

from __future__ import annotations

from foundry.github_data.v1 import github_data_service_pb2 as gh_pb2
from foundry.github_data.v1 import github_data_service_pb2_grpc as gh_grpc
from foundry.organization.v1 import organization_service_pb2 as org_pb2
from foundry.organization.v1 import organization_service_pb2_grpc as org_grpc

SCOPES = ("read:org", "repo")


async def sign_in_with_github(
    organization: org_grpc.OrganizationServiceAsyncStub,
    github_data: gh_grpc.GithubDataServiceAsyncStub,
    *,
    github_account_id: int,
    login: str,
    access_token: str,
    scopes: tuple[str, ...] = SCOPES,
    user_agent: str = "pytest",
) -> org_pb2.SignInWithGithubResponse:
    """Both calls, as service callers (the stubs' channels carry the gateway's identity)."""
    signed = await organization.SignInWithGithub(
        org_pb2.SignInWithGithubRequest(
            github_account_id=github_account_id, login=login, user_agent=user_agent
        )
    )
    await github_data.SetGithubToken(
        gh_pb2.SetGithubTokenRequest(user=signed.user.name, access_token=access_token, scopes=list(scopes))
    )
    return signed
