"""Git operations on a sandbox's checkout, run through the provider's `exec` (real git, no library).

Every failure becomes a readable error carrying git's own message: `RemoteUnusable`
(FAILED_PRECONDITION: missing remote, not a repository, access denied) or `GitError` (UNAVAILABLE,
retryable: network trouble, locks). A token for HTTPS access is handed to git through a one-shot
credential helper reading an environment variable; it never lands in a file, URL or log.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.sandbox.domain.errors import GitError, RemoteUnusable
from services.sandbox.domain.ports import ExecResult, Provider

WORK = "work"
_TOKEN_ENV = "FOUNDRY_GIT_TOKEN"
_CREDENTIAL_HELPER = (
    '!f() { test "$1" = get || exit 0; echo username=x-access-token; echo "password=$'
    + _TOKEN_ENV
    + '"; }; f'
)
_UNUSABLE = re.compile(
    r"does not appear to be a git repository|not a git repository|repository .* not found"
    r"|Repository not found|Authentication failed|could not read Username|Permission denied"
    r"|does not exist|No such file or directory|invalid|not found",
    re.IGNORECASE,
)
GIT_TIMEOUT_SECONDS = 600.0


@dataclass
class Git:
    """Runs git in one sandbox. `token`, when set, authenticates HTTPS remotes for this object's calls."""

    provider: Provider
    provider_id: str
    token: str = ""

    def _env(self) -> dict[str, str]:
        env = {"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
        if self.token:
            env[_TOKEN_ENV] = self.token
        return env

    def _argv(self, args: Sequence[str]) -> list[str]:
        argv = ["git", "-c", "core.quotepath=off", "-c", "advice.detachedHead=false"]
        if self.token:
            argv += ["-c", "credential.helper=", "-c", f"credential.helper={_CREDENTIAL_HELPER}"]
        return argv + list(args)

    async def run(
        self,
        *args: str,
        cwd: str = WORK,
        ok_codes: tuple[int, ...] = (0,),
        env: Mapping[str, str] | None = None,
    ) -> ExecResult:
        """Run `git <args>` in `cwd` (relative to the sandbox root); raise a readable error unless the
        exit code is in `ok_codes`."""
        result = await self.provider.exec(
            self.provider_id,
            self._argv(args),
            cwd=cwd,
            env={**self._env(), **(env or {})},
            timeout=GIT_TIMEOUT_SECONDS,
        )
        if result.returncode not in ok_codes:
            raise failure(args, result, self.token)
        return result

    async def try_run(self, *args: str, cwd: str = WORK) -> ExecResult:
        """Run `git <args>` and return the result whatever the exit code."""
        return await self.provider.exec(
            self.provider_id, self._argv(args), cwd=cwd, env=self._env(), timeout=GIT_TIMEOUT_SECONDS
        )


def failure(args: Sequence[str], result: ExecResult, token: str = "") -> GitError | RemoteUnusable:
    """The error for a failed git command: git's message, with any token masked."""
    detail = result.stderr.strip() or result.stdout.strip() or f"exit status {result.returncode}"
    if token:
        detail = detail.replace(token, "***")
    lines = [
        line.removeprefix("fatal: ").removeprefix("error: ") for line in detail.splitlines() if line.strip()
    ]
    message = f"git {args[0]} failed: {'; '.join(lines[-3:])}"
    if _UNUSABLE.search(detail) and "Could not resolve host" not in detail:
        return RemoteUnusable(message)
    return GitError(message)


async def is_repository(git: Git) -> bool:
    """True when the checkout folder holds a git repository."""
    return (await git.provider.exec(git.provider_id, ["test", "-d", f"{WORK}/.git"])).ok


async def remote_branch_exists(git: Git, branch: str) -> bool:
    return (await git.try_run("rev-parse", "--verify", "--quiet", f"refs/remotes/origin/{branch}")).ok


async def default_branch(git: Git) -> str:
    """The remote's default branch (from `origin/HEAD`), falling back to `main` / `master`."""
    result = await git.try_run("symbolic-ref", "--short", "refs/remotes/origin/HEAD")
    if result.ok and result.stdout.strip().startswith("origin/"):
        return result.stdout.strip().removeprefix("origin/")
    for candidate in ("main", "master"):
        if await remote_branch_exists(git, candidate):
            return candidate
    raise RemoteUnusable("the repository has no default branch (is it empty?)")


# Used only when the checkout has no identity of its own (an agent or the user may have set one).
COMMITTER = {
    "GIT_AUTHOR_NAME": "Foundry",
    "GIT_AUTHOR_EMAIL": "foundry@localhost",
    "GIT_COMMITTER_NAME": "Foundry",
    "GIT_COMMITTER_EMAIL": "foundry@localhost",
}


async def commit_all(git: Git, message: str) -> bool:
    """Commit every uncommitted change (`git add -A`) with `message`; False when there was nothing."""
    if not (await git.run("status", "--porcelain")).stdout.strip():
        return False
    await git.run("add", "-A")
    has_identity = (await git.try_run("config", "user.email")).returncode == 0
    await git.run("commit", "--quiet", "--no-verify", "-m", message, env=None if has_identity else COMMITTER)
    return True


async def head_commit(git: Git) -> str:
    return (await git.run("rev-parse", "HEAD")).stdout.strip()


async def current_branch(git: Git) -> str:
    result = await git.try_run("symbolic-ref", "--short", "HEAD")
    return result.stdout.strip() if result.ok else ""


async def valid_branch_name(git: Git, branch: str) -> bool:
    return (await git.try_run("check-ref-format", "--branch", branch, cwd="")).ok
