"""Git over HTTPS with a token: the sandbox's git runs reach a token-checking git server (the
GitHub-wire test server's smart-HTTP endpoint, standing in for github.com) with the token, which
is never in git's argv, the checkout's `.git/config` or an error message."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.sandbox.domain.errors import RemoteUnusable
from services.sandbox.domain.models import WORK, SandboxKey
from services.sandbox.providers.local import LocalProvider
from services.sandbox.usecases import git as gitops
from tests.helpers.github_server import GithubServer, GithubState
from tests.unit.sandbox.gitrepo import git, make_origin

TOKEN = "ghs_0123456789abcdefSECRET"


async def test_clone_and_push_over_http_carry_the_token_only_through_the_credential_helper(
    tmp_path: Path,
) -> None:
    origin = make_origin(tmp_path)
    state = GithubState()
    state.installation_tokens[TOKEN] = 77
    provider = LocalProvider(
        tmp_path / "sandboxes", base_env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    )
    pid = await provider.create(SandboxKey("acme", "sb1"))
    async with GithubServer(state, prefix="/api/v3") as _:
        url = state.serve_git("acme/demo", origin)
        authed = gitops.Git(provider, pid, TOKEN)
        assert not [a for a in authed._argv(["fetch"]) if TOKEN in a]  # never in the process args

        await authed.run("clone", "--origin", "origin", url, WORK, cwd="")
        config = (Path(provider.root(pid)) / WORK / ".git" / "config").read_text()
        assert url in config and TOKEN not in config
        await authed.run("checkout", "-q", "-b", "feat/x")
        await authed.run(
            "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "--allow-empty", "-qm", "x"
        )
        await authed.run("push", "-u", "origin", "feat/x")
        assert git("rev-parse", "refs/heads/feat/x", cwd=origin).strip()
        assert TOKEN not in (Path(provider.root(pid)) / WORK / ".git" / "config").read_text()
        kinds = {kind for line, kind in state.git_requests if "git-receive-pack" in line}
        assert "installation" in kinds

        # Without the token (or with a wrong one) git is refused, readably and without secrets.
        with pytest.raises(RemoteUnusable) as refused:
            await gitops.Git(provider, pid, "ghs_wrong_SECRET").run("fetch", "origin")
        assert "Authentication failed" in refused.value.message and "SECRET" not in refused.value.message
        with pytest.raises(RemoteUnusable):
            await gitops.Git(provider, pid).run("fetch", "origin")
