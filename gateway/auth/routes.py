"""Sign-in, sign-out and CLI tokens.

GET  /v1/auth/session           {signedIn, user?, authSession?, devSignIn, githubSignIn}
POST /v1/auth/dev/signIn        {login, displayName?, email?}  (only with gateway.dev_sign_in)
GET  /v1/auth/github/start      → 302 to GitHub (scopes read:org, repo)
GET  /v1/auth/github/callback   → SignInWithGithub (organization), then the OAuth token to github-data
                                (SetGithubToken), cookie, 302 to the page that started it
POST /v1/auth/signOut           SignOut, cookie cleared, the session's streams end `signed_out`
POST /v1/auth/token             {login?} → {token, expireTime, user, login}: a signed caller identity
                                for foundryctl (`<x-foundry-caller>.<x-foundry-caller-sig>`, 12 h)

The token is minted for the signed-in browser's session when the request carries one (the workbench's
Account page; a cookie-carrying POST, so CSRF-checked), else by dev sign-in with `{login}` (the CLI's
`login --name`, cookie-less). It is a bearer credential checked by signature and expiry only: signing
out does not revoke it (services do not look up auth sessions), so its lifetime is kept at 12 h and
the answer is never cached.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from foundry.github_data.v1 import github_data_service_pb2 as gh_pb2
from foundry.organization.v1 import organization_service_pb2 as org_pb2
from google.protobuf import timestamp_pb2
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from gateway.auth.github import STATE_COOKIE, STATE_MAX_AGE_SECONDS
from gateway.auth.sessions import SESSION_COOKIE, Principal
from gateway.codec import to_dict
from gateway.errors import GatewayError, error_response
from gateway.runtime import GatewayRuntime
from services.platform import clock
from services.platform import context as request_context
from services.platform.identity import sign

TOKEN_TTL_SECONDS = 12 * 3600


def _runtime(request: Request) -> GatewayRuntime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def _principal_of(response: org_pb2.SignInLocalResponse | org_pb2.SignInWithGithubResponse) -> Principal:
    return Principal(
        auth_session=response.auth_session.name,
        user=response.user.name,
        login=response.user.login,
        avatar_url=response.user.avatar_url,
    )


def set_session_cookie(response: Response, runtime: GatewayRuntime, principal: Principal) -> None:
    gw = runtime.settings.gateway
    response.set_cookie(
        SESSION_COOKIE,
        runtime.cookies.encode(principal),
        max_age=int(gw.session_ttl_hours * 3600),
        httponly=True,
        samesite="lax",
        secure=gw.cookie_secure,
        path="/",
    )


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except json.JSONDecodeError as exc:
        raise GatewayError(
            grpc.StatusCode.INVALID_ARGUMENT, "body is not JSON", reason="BAD_REQUEST_BODY"
        ) from exc
    if not isinstance(body, dict):
        raise GatewayError(
            grpc.StatusCode.INVALID_ARGUMENT, "body must be an object", reason="BAD_REQUEST_BODY"
        )
    return body


async def _sign_in_local(
    runtime: GatewayRuntime, request: Request, body: dict[str, Any]
) -> org_pb2.SignInLocalResponse:
    if not runtime.settings.gateway.dev_sign_in:
        raise GatewayError(
            grpc.StatusCode.FAILED_PRECONDITION, "dev sign-in is disabled", reason="LOCAL_SIGN_IN_DISABLED"
        )
    call = runtime.unary("organization", "SignInLocal", org_pb2.SignInLocalResponse)
    message = org_pb2.SignInLocalRequest(
        login=str(body.get("login", "")),
        display_name=str(body.get("displayName", body.get("display_name", ""))),
        email=str(body.get("email", "")),
        user_agent=request.headers.get("user-agent", "")[:200],
    )
    with request_context.bound(request_id=request_context.request_id(), caller=None):
        response: org_pb2.SignInLocalResponse = await call(message, timeout=runtime.deadline(request))
    return response


async def session(request: Request) -> Response:
    runtime = _runtime(request)
    try:
        principal = await runtime.principal(request)
    except GatewayError as exc:
        return error_response(exc)
    body: dict[str, Any] = {
        "signedIn": principal is not None,
        "devSignIn": runtime.settings.gateway.dev_sign_in,
        "githubSignIn": runtime.github.enabled,
    }
    if principal is not None:
        body.update(
            user=principal.user,
            login=principal.login,
            avatarUrl=principal.avatar_url,
            authSession=principal.auth_session,
        )
    return JSONResponse(body)


async def dev_sign_in(request: Request) -> Response:
    runtime = _runtime(request)
    try:
        response = await _sign_in_local(runtime, request, await _json(request))
    except (GatewayError, grpc.RpcError) as exc:
        return error_response(exc)
    out = JSONResponse(to_dict(response))
    set_session_cookie(out, runtime, _principal_of(response))
    return out


async def github_start(request: Request) -> Response:
    runtime = _runtime(request)
    try:
        url, nonce = runtime.github.start(request.query_params.get("redirect", "/"))
    except GatewayError as exc:
        return error_response(exc)
    out = RedirectResponse(url, status_code=302)
    out.set_cookie(
        STATE_COOKIE,
        nonce,
        max_age=STATE_MAX_AGE_SECONDS,
        httponly=True,
        samesite="lax",
        secure=runtime.settings.gateway.cookie_secure,
        path="/v1/auth/github",
    )
    return out


async def github_callback(request: Request) -> Response:
    runtime = _runtime(request)
    try:
        if "error" in request.query_params:
            raise GatewayError(
                grpc.StatusCode.UNAUTHENTICATED,
                f"GitHub: {request.query_params['error']}",
                reason="OAUTH_DENIED",
            )
        return_to = runtime.github.check_state(
            request.query_params.get("state", ""), request.cookies.get(STATE_COOKIE)
        )
        identity = await runtime.github.exchange(request.query_params.get("code", ""))
        expire = None
        if identity.expires_in:
            expire = timestamp_pb2.Timestamp()
            expire.FromDatetime(clock.now() + timedelta(seconds=identity.expires_in))
        message = org_pb2.SignInWithGithubRequest(
            github_account_id=identity.account_id,
            login=identity.login,
            display_name=identity.name,
            email=identity.email,
            avatar_url=identity.avatar_url,
            user_agent=request.headers.get("user-agent", "")[:200],
        )
        call = runtime.unary("organization", "SignInWithGithub", org_pb2.SignInWithGithubResponse)
        # github-data owns GitHub tokens: it stores this one and queues the discovery of the user's
        # accounts (both calls only record and enqueue). The user exists first, so the discovery's
        # result always finds them; without the token stored the sign-in fails (no cookie).
        store_token = runtime.unary("github_data", "SetGithubToken", gh_pb2.SetGithubTokenResponse)
        with request_context.bound(request_id=request_context.request_id(), caller=None):
            response = await call(message, timeout=runtime.deadline(request))
            await store_token(
                gh_pb2.SetGithubTokenRequest(
                    user=response.user.name,
                    access_token=identity.access_token,
                    scopes=list(identity.scopes),
                    expire_time=expire,
                ),
                timeout=runtime.deadline(request),
            )
    except (GatewayError, grpc.RpcError) as exc:
        return error_response(exc)
    out = RedirectResponse(return_to, status_code=302)
    set_session_cookie(out, runtime, _principal_of(response))
    out.delete_cookie(STATE_COOKIE, path="/v1/auth/github")
    return out


async def sign_out(request: Request) -> Response:
    runtime = _runtime(request)
    principal = runtime.cookies.decode(request.cookies.get(SESSION_COOKIE))
    if principal is not None:
        call = runtime.unary("organization", "SignOut", org_pb2.SignOutResponse)
        try:
            with request_context.bound(request_id=request_context.request_id(), caller=principal.caller):
                await call(
                    org_pb2.SignOutRequest(auth_session=principal.auth_session),
                    timeout=runtime.deadline(request),
                )
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                return error_response(exc)
        runtime.sessions.forget(principal.auth_session)
        for conn in list(request.app.state.manager.connections.values()):
            if conn.principal.auth_session == principal.auth_session:
                conn.end("signed_out")
    out = JSONResponse({"signedIn": False})
    out.delete_cookie(SESSION_COOKIE, path="/")
    return out


async def token(request: Request) -> Response:
    runtime = _runtime(request)
    try:
        principal = await runtime.principal(request)
        if principal is None:
            body = await _json(request)
            if not body.get("login"):
                raise GatewayError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "sign in first (or send {login} for dev sign-in)",
                    reason="SIGNED_OUT",
                )
            principal = _principal_of(await _sign_in_local(runtime, request, body))
    except (GatewayError, grpc.RpcError) as exc:
        return error_response(exc)
    pairs = sign(
        principal.caller,
        runtime.settings.internal_auth_secret.get_secret_value(),
        ttl_seconds=TOKEN_TTL_SECONDS,
    )
    expire = datetime.fromtimestamp(time.time() + TOKEN_TTL_SECONDS, UTC).isoformat().replace("+00:00", "Z")
    return JSONResponse(
        {
            "token": f"{pairs[0][1]}.{pairs[1][1]}",
            "expireTime": expire,
            "user": principal.user,
            "login": principal.login,
        },
        headers={"Cache-Control": "no-store"},
    )
