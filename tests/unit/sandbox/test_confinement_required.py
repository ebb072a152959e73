"""Where confinement is required (`.ci/run` sets FOUNDRY_TEST_REQUIRE_CONFINEMENT=1), bubblewrap must
run: without this the adversarial suite (test_confinement.py) would skip and CI would pass unconfined."""

from __future__ import annotations

import os

import pytest

from services.sandbox.providers.bubblewrap import available


def test_bubblewrap_runs_where_confinement_is_required() -> None:
    if not os.environ.get("FOUNDRY_TEST_REQUIRE_CONFINEMENT"):
        pytest.skip("FOUNDRY_TEST_REQUIRE_CONFINEMENT is not set (a developer machine may lack bwrap)")
    why = available()
    assert why is None, f"confinement is required here but bubblewrap cannot run: {why}"
