"""`python -m services.organization [serve|migrate]`."""

import sys

from services.organization.app import wire
from services.platform.service_main import service_main

sys.exit(service_main("organization", wire))
