"""The locustfile: `locust -f load/locustfile.py` (or `python -m load`, which also sets up the world
and writes reports). Targets come from FOUNDRY_LOAD_* variables (load/config.py).

User classes (weights): MeshGrpcUser 3, GrpcWatchUser 1, GatewayHttpUser 3, SseUser 1. Pick some with
locust's own arguments, e.g. `python -m load -- MeshGrpcUser GrpcWatchUser`.
"""

from __future__ import annotations

# grpc must be patched for gevent before any channel exists (locust has already monkey-patched).
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

from typing import Any  # noqa: E402

from locust import events  # noqa: E402
from locust.env import Environment  # noqa: E402

from load import world as world_module  # noqa: E402
from load.config import world_path  # noqa: E402
from load.users.grpc_user import GrpcWatchUser, MeshGrpcUser  # noqa: E402
from load.users.http_user import GatewayHttpUser, SseUser  # noqa: E402
from load.users.shared import set_world, targets  # noqa: E402

__all__ = ["GatewayHttpUser", "GrpcWatchUser", "MeshGrpcUser", "SseUser"]


@events.test_start.add_listener  # type: ignore[untyped-decorator]
def _set_up_world(environment: Environment, **_: Any) -> None:
    """Load the world `python -m load` prepared, or create one (user, organization, ready task)."""
    try:
        set_world(world_module.ensure(targets(), world_path()))
    except Exception:
        environment.process_exit_code = 2
        if environment.runner is not None:
            environment.runner.quit()
        raise
