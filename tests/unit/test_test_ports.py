"""The suite's free ports (load/ports.py): parallel pytest-xdist workers choose from disjoint
shares below the kernel's ephemeral range, so one never binds a port another just picked."""

from __future__ import annotations

import pytest

from load import ports


def _pool(monkeypatch: pytest.MonkeyPatch, worker: str | None, count: str | None) -> range:
    for name, value in (("PYTEST_XDIST_WORKER", worker), ("PYTEST_XDIST_WORKER_COUNT", count)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    return ports.port_pool()


def test_workers_get_disjoint_shares_below_the_ephemeral_range(monkeypatch: pytest.MonkeyPatch) -> None:
    low, _ = ports.ephemeral_range()
    whole = _pool(monkeypatch, None, None)
    assert whole.stop == low and len(whole) > 0
    first, second = _pool(monkeypatch, "gw0", "2"), _pool(monkeypatch, "gw1", "2")
    assert len(first) > 1000 and len(second) > 1000
    assert not set(first) & set(second)
    assert whole.start <= first.start and second.stop <= low
    # A replacement worker (gw2 of 2, which the Makefile does not allow) falls back to the whole pool,
    # never into the ephemeral range.
    assert _pool(monkeypatch, "gw2", "2") == whole


def test_free_port_stays_in_the_workers_share(monkeypatch: pytest.MonkeyPatch) -> None:
    share = _pool(monkeypatch, "gw1", "2")
    chosen = {ports.free_port() for _ in range(20)}
    assert len(chosen) == 20 and all(port in share for port in chosen)
