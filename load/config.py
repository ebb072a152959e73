"""Where the load test sends its traffic, read from the environment.

FOUNDRY_LOAD_ORGANIZATION_TARGET  host:port of the organization service (default: the FOUNDRY_* port settings)
FOUNDRY_LOAD_TASK_TARGET          host:port of the task service
FOUNDRY_LOAD_GITHUB_DATA_TARGET   host:port of the github-data service
FOUNDRY_LOAD_GATEWAY_URL          base URL of the gateway (default http://<bind host>:<gateway port>)
FOUNDRY_LOAD_WORLD                JSON file with the user/organization/task the users share
FOUNDRY_LOAD_STREAM_SECONDS       how long a stream user holds one Watch / SSE stream (default 10)
FOUNDRY_LOAD_WAIT_SECONDS         upper bound of the think time between a user's requests (default 1)
FOUNDRY_INTERNAL_AUTH_SECRET      the key that signs caller identities (same as the services')
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from services.platform.settings import Settings


@dataclass(frozen=True)
class Targets:
    """Addresses of the mesh under test and the secret used to sign callers."""

    organization: str
    task: str
    github_data: str
    gateway_url: str
    secret: str

    @staticmethod
    def from_env() -> Targets:
        settings = Settings()
        env = os.environ.get
        return Targets(
            organization=env("FOUNDRY_LOAD_ORGANIZATION_TARGET") or settings.target_of("organization"),
            task=env("FOUNDRY_LOAD_TASK_TARGET") or settings.target_of("task"),
            github_data=env("FOUNDRY_LOAD_GITHUB_DATA_TARGET") or settings.target_of("github_data"),
            gateway_url=(
                env("FOUNDRY_LOAD_GATEWAY_URL") or f"http://{settings.bind_host}:{settings.gateway_port}"
            ).rstrip("/"),
            secret=settings.internal_auth_secret.get_secret_value(),
        )


def world_path() -> Path | None:
    value = os.environ.get("FOUNDRY_LOAD_WORLD")
    return Path(value) if value else None


def stream_seconds() -> float:
    """Seconds a stream user keeps one stream open."""
    return float(os.environ.get("FOUNDRY_LOAD_STREAM_SECONDS", "10"))


def wait_seconds() -> float:
    """Upper bound of the random think time between two requests of one user."""
    return float(os.environ.get("FOUNDRY_LOAD_WAIT_SECONDS", "1"))
