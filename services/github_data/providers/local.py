"""The `local` provider: an organization backed by a directory of git repositories on this machine.

Each direct subdirectory holding `.git` (a work tree) or laid out as a bare repository (`HEAD`,
`objects/`, `refs/`) is one repository: full name = directory name, clone URL = its absolute path,
default branch = `git symbolic-ref --short HEAD`. No members, no pull requests.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from services.github_data.domain.ports import ProviderError, RemoteMember, RemotePullRequest, RemoteRepository

_GIT_CONCURRENCY = 8
_FALLBACK_BRANCH = "main"


def is_repository(path: Path) -> bool:
    """True for a work tree (`.git` dir or file) or a bare repository."""
    if not path.is_dir():
        return False
    if (path / ".git").exists():
        return True
    return (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()


async def default_branch(path: Path) -> str:
    """The branch HEAD points at (`main` when HEAD is detached or git fails)."""
    proc = await asyncio.create_subprocess_exec(
        "git",
        "-C",
        str(path),
        "symbolic-ref",
        "--quiet",
        "--short",
        "HEAD",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await proc.communicate()
    branch = out.decode().strip()
    return branch if proc.returncode == 0 and branch else _FALLBACK_BRANCH


def head_time(path: Path) -> datetime | None:
    """When HEAD last changed (a commit, checkout or branch switch), as the provider update time."""
    head = path / ".git" / "HEAD" if (path / ".git").is_dir() else path / "HEAD"
    try:
        return datetime.fromtimestamp(head.stat().st_mtime, tz=UTC)
    except OSError:
        return None


class LocalProvider:
    """Lists the git repositories under `root`. Raises ProviderError when `root` is not a directory."""

    def __init__(self, root: str) -> None:
        self.configured = Path(root)
        self.root = self.configured.resolve()

    async def list_repositories(self) -> list[RemoteRepository]:
        # Organizations record their resolved directory: resolving elsewhere now means it was swapped
        # for a symlink after the connection was checked (to someone else's repositories, say).
        if self.root != self.configured:
            raise ProviderError(
                f"{self.configured} now leads to {self.root} (a symlink); reconnect the directory itself"
            )
        if not self.root.is_dir():
            raise ProviderError(f"{self.root} is not a readable directory")
        try:
            # A symlink out of the root (to another user's code, another task's checkout) is no repository.
            candidates = sorted(
                p for p in self.root.iterdir() if p.resolve().is_relative_to(self.root) and is_repository(p)
            )
        except OSError as exc:
            raise ProviderError(f"cannot read {self.root}: {exc.strerror}") from exc
        gate = asyncio.Semaphore(_GIT_CONCURRENCY)

        async def describe(path: Path) -> RemoteRepository:
            async with gate:
                branch = await default_branch(path)
            return RemoteRepository(
                full_name=path.name,
                clone_url=str(path),  # root is resolved, so this is absolute
                default_branch=branch,
                provider_update_time=head_time(path),
            )

        return list(await asyncio.gather(*(describe(p) for p in candidates)))

    async def list_members(self) -> list[RemoteMember]:
        return []

    async def list_open_pull_requests(self, repository: RemoteRepository) -> list[RemotePullRequest]:
        return []
