"""`python -m services.embedded` (`make run`): the whole mesh in one process on the embedded default.

Four gRPC servers (each on its own port, calling each other over loopback gRPC exactly as in
production), the gateway, SQLite files under FOUNDRY_DATA_DIR (default ./data) and the in-process
broker. Setting FOUNDRY_DATABASE_URL/FOUNDRY_AMQP_URL also works here (one process, real servers).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from services.platform.messaging.broker import Broker
from services.platform.process import Component, run_forever
from services.platform.server.host import ServiceHost, Wire
from services.platform.settings import SERVICE_NAMES, ServiceName, Settings


def service_wiring(name: ServiceName) -> Wire:
    """The wiring function of one service (`services.<name>.app.wire`); this module is the only one
    that knows all four services."""
    return importlib.import_module(f"services.{name}.app").wire  # type: ignore[no-any-return]


def build(settings: Settings, broker: Broker, *, with_gateway: bool = True) -> Sequence[Component]:
    """The components of an embedded process, in start order (services, then the gateway)."""
    components: list[Component] = [
        ServiceHost(settings, name, broker, service_wiring(name)) for name in SERVICE_NAMES
    ]
    if with_gateway:
        from gateway.app import GatewayComponent

        components.append(GatewayComponent(settings))
    return components


def main() -> int:
    settings = Settings()
    # The sandbox service runs here: its git and agent processes are cheaper to start on asyncio.
    run_forever(settings, "embedded", lambda broker: build(settings, broker), spawns_processes=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
