"""Sandbox providers: where sandboxes live and how their commands are confined.

`local` keeps one directory per sandbox and runs commands as the service; `bubblewrap` uses the same
layout and confines every agent, process and checkout git command (see `bubblewrap`).
"""

from __future__ import annotations

from collections.abc import Mapping

from services.platform.logging import get_logger
from services.platform.settings import Settings
from services.sandbox.providers.bubblewrap import BubblewrapProvider, Limits, available, toolchain_paths
from services.sandbox.providers.egress import EgressPolicy, EgressProxies
from services.sandbox.providers.local import LocalProvider

__all__ = ["BubblewrapProvider", "LocalProvider", "build_provider"]
log = get_logger(__name__)
_MIB = 1024 * 1024


class ProviderUnavailable(RuntimeError):
    """The configured provider cannot run on this host (the service must not start)."""


def build_provider(settings: Settings, base_env: Mapping[str, str]) -> LocalProvider:
    """The provider `settings.sandbox.provider` names (`auto`: see the setting's description), after
    killing the processes an earlier life of the service left on its sandbox root (`kill_leftovers`).

    Raises ProviderUnavailable when bubblewrap is required and cannot confine here."""
    provider = _choose(settings, base_env)
    provider.kill_leftovers()
    return provider


def _choose(settings: Settings, base_env: Mapping[str, str]) -> LocalProvider:
    config = settings.sandbox
    root = settings.sandbox_root()
    choice = config.provider
    if choice in ("auto", "bubblewrap"):
        why = available()
        if why is None:
            return BubblewrapProvider(
                root,
                base_env=base_env,
                toolchain=toolchain_paths(),
                limits=Limits(
                    max_processes=config.max_processes,
                    memory_bytes=config.memory_mb * _MIB,
                    sandbox_memory_bytes=config.sandbox_memory_mb * _MIB,
                    cpu_seconds=config.cpu_seconds,
                    file_size_bytes=config.file_size_mb * _MIB,
                ),
                egress=EgressProxies(EgressPolicy(config.egress), config.egress_allowlist),
                create_delay_seconds=config.create_delay_seconds,
            )
        if choice == "bubblewrap" or settings.environment == "production":
            raise ProviderUnavailable(
                f"sandboxes cannot be confined: {why}. Install bubblewrap, or set "
                "FOUNDRY_SANDBOX__PROVIDER=local to run agents unconfined (never on a shared machine)."
            )
        log.warning("sandbox_unconfined", reason=why, hint="install bubblewrap to confine agents")
    else:
        log.warning(
            "sandbox_unconfined",
            reason="FOUNDRY_SANDBOX__PROVIDER=local",
            hint="agents run as this service, with its files, environment and network",
        )
    return LocalProvider(root, create_delay_seconds=config.create_delay_seconds, base_env=base_env)
