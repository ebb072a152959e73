import sys

from services.platform.service_main import service_main
from services.task.app import wire

sys.exit(service_main("task", wire))
