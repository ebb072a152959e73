"""`python -m services.github_data [serve|migrate]`."""

import sys

from services.github_data.app import wire
from services.platform.service_main import service_main

sys.exit(service_main("github_data", wire))
