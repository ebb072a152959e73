"""Free ports for the mesh processes that tests, benchmarks and load runs start on this machine.

Chosen below the kernel's ephemeral range: a port the kernel picked for `bind(0)` is handed out again
to outgoing connections (PostgreSQL, RabbitMQ, gRPC clients of other processes), which took a
gateway's admin port between its choice and its bind in one CI run. A benchmark started by a test
inherits the test worker's `PYTEST_XDIST_WORKER`, so it chooses from that worker's share too.
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path


def ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_handed_out: set[int] = set()


def port_pool() -> range:
    """The 12000 ports below the ephemeral range, or this pytest-xdist worker's share of them
    (`make test` runs the suite in parallel workers, separate processes): each worker's `_handed_out`
    only knows its own ports, so two workers must never choose from the same ones (a gRPC server of
    one took the other's port between its choice and its bind)."""
    low, _ = ephemeral_range()
    start = max(1024, low - 12000)
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not (worker.startswith("gw") and worker[2:].isdigit() and count.isdigit()):
        return range(start, low)
    index, share = int(worker[2:]), (low - start) // int(count)
    if index >= int(count):  # a replacement worker (the Makefile allows none): the whole pool
        return range(start, low)
    return range(start + index * share, start + (index + 1) * share)


def free_port() -> int:
    """A port free to listen on now, from `port_pool` (see the module docstring). Ports from this
    process are never handed out twice; when the whole pool is busy, the kernel's choice."""
    pool = port_pool()
    for _ in range(200 if pool else 0):
        port = random.choice(pool)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # the whole pool is busy: fall back to the kernel's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
