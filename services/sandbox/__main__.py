"""`python -m services.sandbox [serve|migrate]`."""

import sys

from services.platform.service_main import service_main
from services.sandbox.app import wire

sys.exit(service_main("sandbox", wire))
