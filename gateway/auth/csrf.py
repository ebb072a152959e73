"""CSRF protection for mutating requests: a double-submit token plus an Origin check.

- Every response to a browser without the `foundry_csrf` cookie sets one (random, 32 bytes, readable
  by scripts, SameSite=Lax). The workbench copies it into the `X-CSRF-Token` header of every POST,
  PUT, PATCH and DELETE. A cross-site page can neither read the cookie nor set the header.
- When an `Origin` header is present it must be the gateway's own origin (the request's host, or
  `gateway.public_url`).
- Exempt: `POST /v1/webhooks/github` (authenticated by its HMAC signature) and `POST /v1/auth/token`
  sent without cookies (the CLI; nothing ambient is used, the answer is only readable by the caller).
  Sign-in endpoints are NOT exempt (login CSRF).
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

import grpc
from starlette.requests import Request

from gateway.errors import GatewayError

CSRF_COOKIE = "foundry_csrf"
CSRF_HEADER = "x-csrf-token"
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
EXEMPT_PATHS = frozenset({"/v1/webhooks/github"})
COOKIELESS_OK_PATHS = frozenset({"/v1/auth/token"})


def new_token() -> str:
    return secrets.token_urlsafe(32)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def check(request: Request, public_url: str) -> None:
    """Raise GatewayError(PERMISSION_DENIED) unless a mutating request passes both checks."""
    if request.method not in MUTATING or request.url.path in EXEMPT_PATHS:
        return
    if request.url.path in COOKIELESS_OK_PATHS and not request.headers.get("cookie"):
        return
    origin = request.headers.get("origin")
    if origin and origin != "null":
        allowed = {_origin(str(request.base_url)), _origin(public_url)}
        if origin.lower() not in allowed:
            raise GatewayError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"cross-origin request from {origin}",
                reason="CSRF_ORIGIN_MISMATCH",
            )
    cookie = request.cookies.get(CSRF_COOKIE, "")
    header = request.headers.get(CSRF_HEADER, "")
    if not cookie or not header or not hmac.compare_digest(cookie, header):
        raise GatewayError(
            grpc.StatusCode.PERMISSION_DENIED,
            f"missing or wrong {CSRF_HEADER} header (copy the {CSRF_COOKIE} cookie)",
            reason="CSRF_TOKEN_MISMATCH",
        )
