"""One organization service host per test module (SQLite + in-process broker); tests isolate by
using organizations of their own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.platform.settings import Settings, WatchSettings
from tests.helpers.infra import unique_name
from tests.helpers.mesh import running
from tests.unit.organization.support import OrgEnv, fake_github_data


@pytest.fixture(scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[OrgEnv]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("organization") / "data",
        name_prefix=unique_name("foundry"),
        metrics_port=0,
        log_format="console",
        log_level="WARNING",
        watch=WatchSettings(bookmark_seconds=1.0),
    )
    async with (
        running(settings, ["organization"]) as mesh,
        fake_github_data(mesh.settings.github_data_port) as gh,
    ):
        yield OrgEnv(mesh, gh)
