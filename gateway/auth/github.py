"""GitHub OAuth (web application flow) against configurable endpoints (github.com or GHES).

Scopes `read:org` and `repo`. The `state` parameter is signed (itsdangerous, 10 minutes) and bound
to the browser by a nonce cookie, so a callback cannot be replayed into another browser.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from urllib.parse import urlencode

import grpc
import httpx
from itsdangerous import BadSignature, URLSafeTimedSerializer

from gateway.errors import GatewayError
from services.platform.settings import Settings

SCOPES = ("read:org", "repo")
STATE_COOKIE = "foundry_oauth_state"
STATE_MAX_AGE_SECONDS = 600


@dataclass(frozen=True)
class GithubIdentity:
    """Who signed in, with the token GitHub granted."""

    account_id: int
    login: str
    name: str
    email: str
    avatar_url: str
    access_token: str
    scopes: tuple[str, ...] = field(default_factory=tuple)
    expires_in: int = 0


class GithubOAuth:
    """Builds the authorize redirect and exchanges the callback's code for an identity."""

    def __init__(self, settings: Settings, *, http: httpx.AsyncClient | None = None) -> None:
        self._github = settings.github
        self._redirect_uri = settings.gateway.public_url.rstrip("/") + "/v1/auth/github/callback"
        self._states = URLSafeTimedSerializer(
            settings.gateway.session_secret.get_secret_value(), salt="foundry.oauth-state"
        )
        self._http = http

    @property
    def enabled(self) -> bool:
        return bool(self._github.client_id and self._github.client_secret)

    def start(self, return_to: str) -> tuple[str, str]:
        """(authorize URL, nonce for the state cookie)."""
        if not self.enabled:
            raise GatewayError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "GitHub sign-in is not configured",
                reason="GITHUB_SIGN_IN_DISABLED",
            )
        nonce = secrets.token_urlsafe(16)
        state = self._states.dumps({"n": nonce, "r": return_to if return_to.startswith("/") else "/"})
        query = urlencode(
            {
                "client_id": self._github.client_id,
                "redirect_uri": self._redirect_uri,
                "scope": " ".join(SCOPES),
                "state": state,
                "allow_signup": "true",
            }
        )
        return f"{self._github.oauth_authorize_url}?{query}", nonce

    def check_state(self, state: str, nonce_cookie: str | None) -> str:
        """The return path of a valid state; GatewayError(UNAUTHENTICATED) otherwise."""
        try:
            data = self._states.loads(state, max_age=STATE_MAX_AGE_SECONDS)
        except BadSignature as exc:
            raise GatewayError(
                grpc.StatusCode.UNAUTHENTICATED, "bad or expired OAuth state", reason="OAUTH_STATE_INVALID"
            ) from exc
        if not nonce_cookie or not secrets.compare_digest(str(data.get("n")), nonce_cookie):
            raise GatewayError(
                grpc.StatusCode.UNAUTHENTICATED,
                "OAuth state belongs to another browser",
                reason="OAUTH_STATE_MISMATCH",
            )
        return str(data.get("r") or "/")

    async def exchange(self, code: str) -> GithubIdentity:
        """Code → token → user. Raises GatewayError (UNAUTHENTICATED or UNAVAILABLE)."""
        secret = self._github.client_secret.get_secret_value() if self._github.client_secret else ""
        async with self._client() as http:
            try:
                token_response = await http.post(
                    self._github.oauth_token_url,
                    headers={"Accept": "application/json"},
                    data={
                        "client_id": self._github.client_id or "",
                        "client_secret": secret,
                        "code": code,
                        "redirect_uri": self._redirect_uri,
                    },
                )
                token = token_response.json()
                if "access_token" not in token:
                    raise GatewayError(
                        grpc.StatusCode.UNAUTHENTICATED,
                        f"GitHub refused the code: {token.get('error', 'unknown')}",
                        reason="OAUTH_CODE_REJECTED",
                    )
                auth = {
                    "Authorization": f"Bearer {token['access_token']}",
                    "Accept": "application/vnd.github+json",
                }
                user_response = await http.get(f"{self._github.api_url.rstrip('/')}/user", headers=auth)
                user_response.raise_for_status()
                user = user_response.json()
                email = user.get("email") or await self._primary_email(http, auth)
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                raise GatewayError(
                    grpc.StatusCode.UNAVAILABLE, f"GitHub unreachable: {exc}", reason="GITHUB_UNAVAILABLE"
                ) from exc
        scopes = tuple(
            s.strip() for s in str(token.get("scope", "")).replace(" ", ",").split(",") if s.strip()
        )
        return GithubIdentity(
            account_id=int(user["id"]),
            login=str(user["login"]),
            name=str(user.get("name") or ""),
            email=email,
            avatar_url=str(user.get("avatar_url") or ""),
            access_token=str(token["access_token"]),
            scopes=scopes,
            expires_in=int(token.get("expires_in") or 0),
        )

    async def _primary_email(self, http: httpx.AsyncClient, auth: dict[str, str]) -> str:
        response = await http.get(f"{self._github.api_url.rstrip('/')}/user/emails", headers=auth)
        if response.status_code != 200:
            return ""
        for entry in response.json():
            if entry.get("primary") and entry.get("verified"):
                return str(entry.get("email", ""))
        return ""

    def _client(self) -> httpx.AsyncClient:
        if self._http is not None:
            return _Borrowed(self._http)  # type: ignore[return-value]
        return httpx.AsyncClient(timeout=10.0)


class _Borrowed:
    """An injected client used as a context manager without closing it."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def __aenter__(self) -> httpx.AsyncClient:
        return self._client

    async def __aexit__(self, *exc: object) -> None:
        return None
