"""`python -m gateway`: the gateway as its own process (production shape)."""

from __future__ import annotations

import sys

from gateway.app import GatewayComponent
from services.platform.process import run_forever
from services.platform.settings import Settings


def main() -> int:
    settings = Settings()
    run_forever(settings, "gateway", lambda _broker: [GatewayComponent(settings)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
