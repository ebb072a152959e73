"""Git operations on a sandbox's checkout, run through the provider's `exec` (real git, no library).

Every failure becomes a readable error carrying git's own message: `RemoteUnusable`
(FAILED_PRECONDITION: missing remote, not a repository, access denied) or `GitError` (UNAVAILABLE,
retryable: network trouble, locks). A token for HTTPS access is handed to git through a one-shot
credential helper reading an environment variable; it never lands in a file, URL or log.
"""

from __future__ import annotations

import re
import secrets
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.sandbox.domain.errors import GitError, RemoteUnusable
from services.sandbox.domain.models import WORK
from services.sandbox.domain.ports import ExecResult, Provider

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
# Git run as the service near a repository an agent could have written: nothing in it may run code.
_SERVICE_SIDE = (
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "core.askPass=/bin/false",
    "credential.helper=",  # drops helpers a repository's config names (ours is added after, if any)
    "protocol.allow=never",
    "protocol.https.allow=always",
    "protocol.http.allow=always",
    "protocol.file.allow=always",
)
PUSH_REPO = "push.git"
FETCH_REPO = "fetch.git"
MAX_BATCH_SCRIPT = 64 * 1024  # bytes of one `run_many` script; Linux caps one argument at 128 KiB


@dataclass
class Git:
    """Runs git in one sandbox. `token`, when set, authenticates HTTPS remotes for this object's calls."""

    provider: Provider
    provider_id: str
    token: str = ""

    def _env(self) -> dict[str, str]:
        # No optional locks: the service's `git status` must never hold index.lock under an agent's git.
        env = {"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "GIT_OPTIONAL_LOCKS": "0"}
        if self.token:
            env[_TOKEN_ENV] = self.token
        return env

    def _argv(self, args: Sequence[str], confined: bool = True) -> list[str]:
        argv = ["git", "-c", "core.quotepath=off", "-c", "advice.detachedHead=false"]
        if not confined:
            argv += [arg for setting in _SERVICE_SIDE for arg in ("-c", setting)]
        if self.token:
            argv += ["-c", "credential.helper=", "-c", f"credential.helper={_CREDENTIAL_HELPER}"]
        return argv + list(args)

    async def run(
        self,
        *args: str,
        cwd: str = WORK,
        ok_codes: tuple[int, ...] = (0,),
        env: Mapping[str, str] | None = None,
        confined: bool = True,
    ) -> ExecResult:
        """Run `git <args>` in `cwd` (relative to the sandbox root); raise a readable error unless the
        exit code is in `ok_codes`. `confined=False`: as the service (see `Provider.exec`), with
        repository hooks, fsmonitor and the `ext::` transport off."""
        result = await self.provider.exec(
            self.provider_id,
            self._argv(args, confined),
            cwd=cwd,
            env={**self._env(), **(env or {})},
            timeout=GIT_TIMEOUT_SECONDS,
            confined=confined,
        )
        if result.returncode not in ok_codes:
            raise failure(args, result, self.token)
        return result

    async def run_configured(self, config: Mapping[str, str], *args: str) -> ExecResult:
        """`git config <key> <value>` for each of `config` in the checkout, then `git <args>`, in one
        confined process (a shell running them in turn, stopping at the first failure): each confined
        process costs a bubblewrap start, and this runs on every task's way to ready. Errors as `run`."""
        script = (
            'n=$1; shift; while [ "$n" -gt 0 ]; do git config "$1" "$2" || exit; shift 2; n=$((n-1)); done; '
            'exec "$@"'
        )
        pairs = [part for item in config.items() for part in item]
        result = await self.provider.exec(
            self.provider_id,
            ["/bin/sh", "-c", script, "sh", str(len(config)), *pairs, *self._argv(args)],
            cwd=WORK,
            env=self._env(),
            timeout=GIT_TIMEOUT_SECONDS,
        )
        if not result.ok:
            raise failure(args, result, self.token)  # git's own message says which command failed
        return result

    async def run_many(self, commands: Sequence[Sequence[str]]) -> list[ExecResult]:
        """Run `git <args>` for each of `commands` in the checkout, in turn, in one confined process per
        MAX_BATCH_SCRIPT of script (a shell; each confined process costs a bubblewrap start), and
        return each one's result whatever its exit code (check with `checked`).

        Each command's output is followed by a line holding a random marker and its exit code, on
        stdout and on stderr; outputs are cut at those lines. Raises GitError when the outputs cannot
        be cut so (a command printed the marker, or the shell died), Unavailable as `Provider.exec`."""
        marker = f"foundry-{secrets.token_hex(16)}"
        results: list[ExecResult] = []
        batch: list[Sequence[str]] = []
        lines: list[str] = []
        size = 0
        for args in commands:
            line = (
                f"{shlex.join(self._argv(args))} </dev/null; s=$?; "
                f"printf '\\n{marker} %d\\n' $s; printf '\\n{marker} %d\\n' $s >&2"
            )
            if lines and size + len(line.encode()) > MAX_BATCH_SCRIPT:
                results += await self._run_batch(batch, lines, marker)
                batch, lines, size = [], [], 0
            batch.append(args)
            lines.append(line)
            size += len(line.encode()) + 1  # and its newline
        if batch:
            results += await self._run_batch(batch, lines, marker)
        return results

    async def _run_batch(
        self, commands: Sequence[Sequence[str]], lines: list[str], marker: str
    ) -> list[ExecResult]:
        result = await self.provider.exec(
            self.provider_id,
            ["/bin/sh", "-c", "\n".join(lines)],
            cwd=WORK,
            env=self._env(),
            timeout=GIT_TIMEOUT_SECONDS,
        )
        outs, errs = _framed(result.stdout, marker), _framed(result.stderr, marker)
        if len(outs) != len(commands) or [c for _, c in outs] != [c for _, c in errs]:
            raise GitError(
                f"git output could not be read (exit status {result.returncode}): "
                + (result.stderr.strip().splitlines() or ["no message"])[-1]
            )
        return [
            ExecResult(tuple(self._argv(args)), code, out, err)
            for args, (out, code), (err, _) in zip(commands, outs, errs, strict=True)
        ]

    def checked(self, result: ExecResult, ok_codes: tuple[int, ...] = (0,)) -> ExecResult:
        """`result` (of `run_many`) when its exit code is in `ok_codes`; else the error `run` raises."""
        if result.returncode not in ok_codes:
            raise failure(result.argv[len(self._argv(())) :], result, self.token)
        return result

    async def try_run(self, *args: str, cwd: str = WORK, confined: bool = True) -> ExecResult:
        """Run `git <args>` and return the result whatever the exit code."""
        return await self.provider.exec(
            self.provider_id,
            self._argv(args, confined),
            cwd=cwd,
            env=self._env(),
            timeout=GIT_TIMEOUT_SECONDS,
            confined=confined,
        )


def _framed(text: str, marker: str) -> list[tuple[str, int]]:
    """`out1\\n<marker> 0\\nout2\\n<marker> 1\\n` → [(out1, 0), (out2, 1)]; [] when malformed."""
    pieces = text.split(f"\n{marker} ")
    cut: list[tuple[str, int]] = []
    output = pieces[0]
    for piece in pieces[1:]:
        code, newline, rest = piece.partition("\n")
        if not (newline and code.isdigit()):
            return []
        cut.append((output, int(code)))
        output = rest
    return cut if output == "" else []


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


async def fetch_through_service(git: Git, clone_url: str) -> None:
    """Update the checkout's `origin/*` from `clone_url` without the service running git in it: the
    service clones a fresh bare repository (`fetch.git`, with the token), git in the sandbox fetches
    from that (bound read-only), and the service removes it."""
    provider, pid = git.provider, git.provider_id
    await provider.remove(pid, FETCH_REPO)
    await git.run("clone", "--quiet", "--bare", clone_url, FETCH_REPO, cwd="", confined=False)
    inside = provider.sandbox_path(pid, FETCH_REPO)
    sandboxed = Git(provider, pid)
    try:
        await sandboxed.run("fetch", "--quiet", "--prune", inside, "+refs/heads/*:refs/remotes/origin/*")
        await sandboxed.run("remote", "set-url", "origin", clone_url)
    finally:
        await provider.remove(pid, FETCH_REPO)


async def is_repository(git: Git) -> bool:
    """True when the checkout folder holds a git repository."""
    return (await git.provider.exec(git.provider_id, ["test", "-d", f"{WORK}/.git"], confined=False)).ok


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
    return (await git.try_run("check-ref-format", "--branch", branch, cwd="", confined=False)).ok


async def push_branch(git: Git, *, branch: str, remote_url: str, force_with_lease: bool) -> str:
    """Push `branch` of the checkout to `remote_url` without the service ever running git inside the
    agent-written checkout: git *in the sandbox* pushes the branch into the service-owned bare
    repository `push.git` (whose config and hooks the sandbox cannot change), then the service pushes
    from there with the token. Returns the pushed commit. Raises RemoteUnusable / GitError."""
    provider, pid = git.provider, git.provider_id
    await provider.remove(pid, PUSH_REPO)
    await git.run("init", "--quiet", "--bare", PUSH_REPO, cwd="", confined=False)
    inside = provider.sandbox_path(pid, PUSH_REPO)
    await Git(provider, pid).run("push", "--quiet", "--no-verify", inside, f"+HEAD:refs/heads/{branch}")
    # The sandbox could write objects/ and refs/: links out of them (alternates, symlinks) would have
    # the service's git read another sandbox's objects. Refuse anything but plain files and folders.
    planted = await provider.exec(
        pid,
        [
            "find",
            f"{PUSH_REPO}/objects",
            f"{PUSH_REPO}/refs",
            "(",
            "-type",
            "l",
            "-o",
            "-path",
            "*/info/*alternates",
            ")",
        ],
        confined=False,
    )
    if not planted.ok or planted.stdout.strip():
        await provider.remove(pid, PUSH_REPO)
        raise RemoteUnusable(
            "the pushed branch links outside the sandbox (symlinks or alternates); nothing was pushed"
        )
    head = (await git.run("rev-parse", f"refs/heads/{branch}", cwd=PUSH_REPO, confined=False)).stdout.strip()
    lease: list[str] = []
    if force_with_lease:
        known = await git.try_run("rev-parse", "--verify", "--quiet", f"refs/remotes/origin/{branch}")
        lease = [f"--force-with-lease=refs/heads/{branch}:{known.stdout.strip() if known.ok else ''}"]
    await git.run(
        "push",
        "--porcelain",
        *lease,
        remote_url,
        f"refs/heads/{branch}:refs/heads/{branch}",
        cwd=PUSH_REPO,
        confined=False,
    )
    # The checkout learns what the remote now has (diffs against origin, later leases).
    await Git(provider, pid).run("update-ref", f"refs/remotes/origin/{branch}", head)
    await Git(provider, pid).try_run("branch", f"--set-upstream-to=origin/{branch}", branch)
    await provider.remove(pid, PUSH_REPO)
    return head
