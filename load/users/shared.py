"""What every user class shares: the world set up at test start and the targets."""

from __future__ import annotations

from collections import deque
from typing import TypeVar

from load.config import Targets
from load.world import World

_world: World | None = None
T = TypeVar("T")


def set_world(world: World) -> None:
    global _world
    _world = world


def world() -> World:
    """The world of this run (set by the locustfile's test_start listener)."""
    if _world is None:
        raise RuntimeError("the load world was not set up (test_start did not run)")
    return _world


def targets() -> Targets:
    return Targets.from_env()


def push_bounded(items: deque[T], item: T, keep: int) -> T | None:
    """Append `item`; when more than `keep` remain, pop and return the oldest (to be cleaned up)."""
    items.append(item)
    return items.popleft() if len(items) > keep else None
