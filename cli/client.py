"""foundryctl's plumbing: the stored caller token, channels to the services, name helpers.

The token is what `POST /v1/auth/token` on the gateway returns (dev sign-in by name, or the signed-in
browser's session: the workbench's Account page): `<x-foundry-caller>.<x-foundry-caller-sig>`, a caller
identity signed by the mesh and valid for 12 hours from when it was made. It is a bearer credential:
the services check its signature and expiry, not the browser session it came from, so signing out
does not revoke it (delete the token file, or wait for it to expire). It lives in `$FOUNDRY_TOKEN` or
`$XDG_CONFIG_HOME/foundry/token` (default `~/.config/foundry/token`, mode 0600).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx

from services.platform.channels import CHANNEL_OPTIONS
from services.platform.context import REQUEST_ID_HEADER
from services.platform.identity import CALLER_HEADER, SIGNATURE_HEADER
from services.platform.settings import ServiceName, Settings


class CliError(Exception):
    """A problem to print without a traceback (exit code 1)."""


def token_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "foundry" / "token"


def load_token() -> str:
    token = os.environ.get("FOUNDRY_TOKEN") or (
        token_path().read_text().strip() if token_path().exists() else ""
    )
    if not token:
        raise CliError(
            "not signed in: run `foundryctl login --token -` with a token from the workbench's Account "
            "page (or `foundryctl login --name <you>` where dev sign-in is on, or set FOUNDRY_TOKEN)"
        )
    return token


def save_token(token: str) -> Path:
    path = token_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


def request_token(gateway_url: str, login: str) -> dict[str, Any]:
    """Dev sign-in through the gateway; returns {token, expireTime, user, login}."""
    try:
        response = httpx.post(f"{gateway_url.rstrip('/')}/v1/auth/token", json={"login": login}, timeout=15)
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the gateway at {gateway_url}: {exc}") from exc
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise CliError(f"sign-in failed ({response.status_code}): the gateway said {response.text[:200]!r}")
    if response.status_code != 200:
        message = body.get("message", response.text)
        reasons = [d.get("reason") for d in body.get("details", []) if isinstance(d, dict)]
        if "LOCAL_SIGN_IN_DISABLED" in reasons:
            message += (
                "; sign in to the workbench, open Account → CLI token, and run `foundryctl login --token -`"
            )
        raise CliError(f"sign-in failed ({response.status_code}): {message}")
    return body


def read_token(value: str, stdin: Any) -> str:
    """The token given to `login --token`: the value itself, or the first line of `stdin` for `-`."""
    if value == "-" and stdin.isatty():
        print("Paste the token, then press Enter:", file=sys.stderr, flush=True)
    token = (stdin.readline() if value == "-" else value).strip()
    if not token:
        raise CliError("no token given (pass it after --token, or pipe it in with --token -)")
    return token


def token_claims(token: str) -> dict[str, Any]:
    """The (unverified) caller document inside a token: {sub, login, kind, exp, ...}.

    Only for display; the services verify the signature. Raises CliError when it is not a token.
    """
    caller, _, signature = token.partition(".")
    try:
        claims = json.loads(base64.urlsafe_b64decode(caller.encode() + b"=" * (-len(caller) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise CliError("that is not a foundryctl token (expected <caller>.<signature>)") from exc
    if not signature or not isinstance(claims, dict) or "sub" not in claims:
        raise CliError("that is not a foundryctl token (expected <caller>.<signature>)")
    return claims


def expire_time(claims: dict[str, Any]) -> str:
    """RFC 3339 expiry of a token's claims ('' when it has none)."""
    try:
        exp = float(claims.get("exp", 0))
    except (TypeError, ValueError):
        return ""
    if not exp:
        return ""
    return datetime.fromtimestamp(exp, UTC).isoformat().replace("+00:00", "Z")


class Mesh:
    """Channels to the services, each call carrying the stored identity and a request id."""

    def __init__(self, settings: Settings, token: str) -> None:
        caller, _, signature = token.partition(".")
        if not caller or not signature:
            raise CliError("the stored token is malformed; run `foundryctl login` again")
        self._identity = [(CALLER_HEADER, caller), (SIGNATURE_HEADER, signature)]
        self._settings = settings
        self._channels: dict[str, grpc.aio.Channel] = {}

    def metadata(self) -> list[tuple[str, str]]:
        return [*self._identity, (REQUEST_ID_HEADER, uuid.uuid4().hex)]

    def channel(self, service: ServiceName) -> grpc.aio.Channel:
        if service not in self._channels:
            self._channels[service] = grpc.aio.insecure_channel(
                self._settings.target_of(service), options=CHANNEL_OPTIONS
            )
        return self._channels[service]

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


def org_name(value: str) -> str:
    return value if value.startswith("organizations/") else f"organizations/{value}"


def child_name(org: str | None, collection: str, value: str) -> str:
    """`t1` + `--org acme` → `organizations/acme/tasks/t1`; full names pass through."""
    if value.startswith("organizations/"):
        return value
    if not org:
        raise CliError(f"give a full name (organizations/…/{collection}/{value}) or --org")
    return f"{org_name(org)}/{collection}/{value}"
