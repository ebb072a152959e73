"""Caller identity passed from the gateway (or a service) to services in gRPC metadata.

The identity is a small JSON document signed with HMAC-SHA256 under `FOUNDRY_INTERNAL_AUTH_SECRET`:

    x-foundry-caller:      base64url(JSON {"sub", "login", "kind": "user"|"service", "exp": unix_s})
    x-foundry-caller-sig:  hex(HMAC-SHA256(secret, x-foundry-caller))

Services verify the signature and expiry (`Unauthenticated` otherwise) and then check organization
membership themselves, so the gateway is not the only guard.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Literal

CALLER_HEADER = "x-foundry-caller"
SIGNATURE_HEADER = "x-foundry-caller-sig"


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated principal. `subject` is a user id (`user/<id>`) or `service/<name>`."""

    subject: str
    login: str = ""
    kind: Literal["user", "service"] = "user"
    avatar_url: str = ""

    @property
    def is_service(self) -> bool:
        return self.kind == "service"

    @property
    def user_id(self) -> str:
        """The user id without its `user/` prefix ('' for services)."""
        return self.subject.removeprefix("user/") if self.kind == "user" else ""

    @staticmethod
    def service(name: str) -> Caller:
        return Caller(subject=f"service/{name}", login=name, kind="service")


class IdentityError(Exception):
    """The caller identity is missing, forged or expired."""


def sign(caller: Caller, secret: str, *, ttl_seconds: float = 300.0) -> tuple[tuple[str, str], ...]:
    """Return the two metadata pairs that carry `caller`, valid for `ttl_seconds`."""
    body = {
        "sub": caller.subject,
        "login": caller.login,
        "kind": caller.kind,
        "avatar": caller.avatar_url,
        "exp": int(time.time() + ttl_seconds),
    }
    token = base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode()
    sig = hmac.new(secret.encode(), token.encode(), hashlib.sha256).hexdigest()
    return ((CALLER_HEADER, token), (SIGNATURE_HEADER, sig))


def verify(token: str | None, signature: str | None, secret: str) -> Caller:
    """Check a caller token and return the Caller; raises IdentityError on any problem."""
    return verify_until(token, signature, secret)[0]


def verify_until(token: str | None, signature: str | None, secret: str) -> tuple[Caller, float]:
    """`verify`, also returning the token's expiry (unix seconds): a verifier may reuse the answer
    for the same (token, signature) until then (`CallerIdentity` does)."""
    if not token or not signature:
        raise IdentityError("missing caller identity")
    expected = hmac.new(secret.encode(), token.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise IdentityError("caller identity signature does not match")
    try:
        body = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError) as exc:
        raise IdentityError("caller identity is not valid JSON") from exc
    expires = float(body.get("exp", 0))
    if expires < time.time():
        raise IdentityError("caller identity expired")
    kind = body.get("kind")
    if kind not in ("user", "service"):
        raise IdentityError("caller identity has no valid kind")
    caller = Caller(
        subject=str(body["sub"]),
        login=str(body.get("login", "")),
        kind=kind,
        avatar_url=str(body.get("avatar", "")),
    )
    return caller, expires
