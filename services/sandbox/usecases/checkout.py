"""Work on a prepared checkout: derived git state (cached), revert of one file, one file's contents, push
of the branch."""

from __future__ import annotations

import asyncio
from pathlib import PurePosixPath

from services.platform.logging import get_logger
from services.sandbox.domain.errors import not_found, require
from services.sandbox.domain.models import WORK, ChangeType, GitState, SandboxKey
from services.sandbox.domain.ports import LogRecords
from services.sandbox.usecases import git as gitops
from services.sandbox.usecases.file_content import FileContent, content_path, read_beneath
from services.sandbox.usecases.git_state import compute
from services.sandbox.usecases.sandboxes import Sandboxes

log = get_logger(__name__)


def safe_path(path: str) -> str:
    """A path relative to the checkout root that stays inside it (InvalidArgument otherwise)."""
    require(bool(path), "path", "is required")
    pure = PurePosixPath(path)
    require(
        not pure.is_absolute() and ".." not in pure.parts and pure.parts[:1] != (".git",),
        "path",
        f"{path!r} must be relative to the checkout and stay inside it",
    )
    return str(pure)


class Checkouts:
    """Use cases on a sandbox's checkout.

    Args:
        sandboxes: finds the sandbox and its provider.
        logs: the git state cache.
    """

    def __init__(self, sandboxes: Sandboxes, logs: LogRecords) -> None:
        self.sandboxes = sandboxes
        self.logs = logs

    async def get_git_state(self, key: SandboxKey) -> GitState:
        """The cached state. Raises NotFound (`GIT_STATE_NOT_FOUND`) before the first computation."""
        state = await self.logs.get_git_state(key)
        if state is None:
            raise not_found("git state", f"{key.name}/gitState")
        return state

    async def refresh(self, key: SandboxKey) -> GitState:
        """Recompute the state in the sandbox, cache it and publish `sandbox.git_state.updated`.
        Raises FailedPrecondition (no checkout) and Unavailable (git failed)."""
        sandbox = await self.sandboxes.with_checkout(key)
        assert sandbox.checkout is not None
        git = gitops.Git(self.sandboxes.provider, sandbox.provider_sandbox_id)
        state = await compute(git, key, sandbox.checkout.base_branch)
        return await self.logs.save_git_state(state, task=sandbox.task)

    async def revert_file(self, key: SandboxKey, path: str) -> GitState:
        """Undo the change of `path` against the base (see git_state): restore a file the base has
        from it (worktree and index; a change the agent committed is undone as an uncommitted one),
        delete one the base lacks. Raises NotFound (`PATH_UNCHANGED`) when `path` has no change."""
        path = safe_path(path)
        sandbox = await self.sandboxes.with_checkout(key)
        assert sandbox.checkout is not None
        provider_id = sandbox.provider_sandbox_id
        git = gitops.Git(self.sandboxes.provider, provider_id)
        current = await compute(git, key, sandbox.checkout.base_branch)
        change = next((c for c in current.file_changes if c.path == path), None)
        if change is None:
            raise not_found("path", f"{path} (unchanged in {key.name})")
        base = current.base_commit or "HEAD"
        in_base = (await git.try_run("cat-file", "-e", f"{base}:{path}")).ok
        if in_base:
            await git.run("restore", f"--source={base}", "--staged", "--worktree", "--", path)
        else:
            if change.type is ChangeType.ADDED:
                await git.try_run("rm", "--cached", "--quiet", "--force", "--", path)
            # Deleted from inside the sandbox: the path is the agent's, and may run through its symlinks.
            removed = await self.sandboxes.provider.exec(provider_id, ["rm", "-rf", "--", path], cwd=WORK)
            if not removed.ok:
                raise gitops.failure(("rm",), removed)
        log.info("file_reverted", sandbox=key.name, path=path)
        return await self.refresh(key)

    async def read_file(self, key: SandboxKey, path: str) -> FileContent:
        """One file of the checkout as it is now (the first `MAX_BYTES`), read on the host without
        following any link (file_content.py): no git, no process in the sandbox. Raises
        FailedPrecondition (no checkout, a link, not a regular file), NotFound, InvalidArgument."""
        content_path(path)  # a bad path is refused before the sandbox is looked up
        sandbox = await self.sandboxes.with_checkout(key)
        root = self.sandboxes.provider.root(sandbox.provider_sandbox_id)
        return await asyncio.to_thread(read_beneath, root, path)

    async def push(
        self, key: SandboxKey, *, token: str, force_with_lease: bool, commit_message: str = ""
    ) -> tuple[str, str, str]:
        """`git push -u origin <branch>`, after committing uncommitted changes with `commit_message`
        when one is given; returns (branch, head commit, remote URL without credentials).
        Raises FailedPrecondition (no checkout, remote refused) and Unavailable (git failed)."""
        sandbox = await self.sandboxes.with_checkout(key)
        assert sandbox.checkout is not None
        git = gitops.Git(self.sandboxes.provider, sandbox.provider_sandbox_id, token)
        if commit_message and await gitops.commit_all(git, commit_message):
            log.info("changes_committed", sandbox=key.name)
        branch = await gitops.current_branch(git) or sandbox.checkout.branch
        remote = sandbox.checkout.clone_url  # recorded at prepare: the checkout's own config is the agent's
        head = await gitops.push_branch(
            git, branch=branch, remote_url=remote, force_with_lease=force_with_lease
        )
        log.info("branch_pushed", sandbox=key.name, branch=branch, head=head)
        return branch, head, remote
