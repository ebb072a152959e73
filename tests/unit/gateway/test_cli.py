"""foundryctl as a real process: `login` through the gateway's /v1/auth/token stores a token, and
later commands call the real services over gRPC as that user (the organization service checks the
signed identity and answers with that user's organizations)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from tests.unit.gateway.harness import Harness, running

ROOT = Path(__file__).resolve().parents[3]


async def foundryctl(h: Harness, home: Path, *args: str, token: str | None = None) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(home),
        "GRPC_VERBOSITY": "ERROR",
        "FOUNDRY_ORGANIZATION_PORT": str(h.settings.organization_port),
        "FOUNDRY_TASK_PORT": str(h.settings.task_port),
    }
    env.pop("FOUNDRY_TOKEN", None)
    if token is not None:
        env["FOUNDRY_TOKEN"] = token
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


class TestFoundryctl:
    async def test_login_stores_a_token_that_later_commands_use(self, tmp_path: Path) -> None:
        async with running(tmp_path) as h:
            await h.signed_in("dave", member_of=["organizations/acme"])  # the same user as the CLI's
            await h.signed_in("erin", member_of=["organizations/beta"])
            code, out, err = await foundryctl(
                h, tmp_path, "-o", "json", "login", "--name", "dave", "--gateway", h.url
            )
            assert code == 0, err
            assert json.loads(out)["user"] == "users/local-dave"
            token_file = tmp_path / "foundry" / "token"
            assert token_file.stat().st_mode & 0o077 == 0
            code, out, err = await foundryctl(h, tmp_path, "-o", "json", "orgs", "list")
            assert code == 0, err
            # The service saw dave: his organization, not erin's.
            assert [json.loads(line)["name"] for line in out.splitlines()] == ["organizations/acme"]

    async def test_without_token_commands_fail_with_a_hint(self, tmp_path: Path) -> None:
        async with running(tmp_path) as h:
            code, _, err = await foundryctl(h, tmp_path, "orgs", "list")
            assert code == 1 and "foundryctl login" in err

    async def test_forged_token_is_rejected_by_the_service(self, tmp_path: Path) -> None:
        async with running(tmp_path) as h:
            code, _, err = await foundryctl(h, tmp_path, "orgs", "list", token="e30.deadbeef")
            assert code == 1 and "UNAUTHENTICATED" in err
