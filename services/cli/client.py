"""foundryctl's plumbing: the stored caller token, channels to the services, name helpers.

The token is what `POST /v1/auth/token` on the gateway returns: `<x-foundry-caller>.<x-foundry-caller-sig>`,
a caller identity signed by the mesh (12 h). It lives in `$FOUNDRY_TOKEN` or
`$XDG_CONFIG_HOME/foundry/token` (default `~/.config/foundry/token`).
"""

from __future__ import annotations

import os
import uuid
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
        raise CliError("not signed in: run `foundryctl login --name <you>` (or set FOUNDRY_TOKEN)")
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
    if response.status_code != 200:
        raise CliError(
            f"sign-in failed ({response.status_code}): {response.json().get('message', response.text)}"
        )
    return dict(response.json())


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
