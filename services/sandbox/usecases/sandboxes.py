"""Sandbox lifecycle: create (idempotent by id), read, list, destroy, and prepare the repository checkout."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import PurePosixPath

from services.platform.clock import now
from services.platform.logging import get_logger
from services.platform.paging import offset_page
from services.platform.routing import on_other_replica
from services.sandbox.domain.errors import DOMAIN, not_found, precondition, require
from services.sandbox.domain.models import WORK, Checkout, Sandbox, SandboxKey, SandboxState
from services.sandbox.domain.ports import Agents, Provider, SandboxRecords
from services.sandbox.usecases import git as gitops

log = get_logger(__name__)
_REPOSITORY = re.compile(r"^organizations/[^/]+/repositories/[^/]+$")
_TASK = re.compile(r"^organizations/[^/]+/tasks/[^/]+$")


def validate_clone_url(url: str) -> None:
    """A clone URL is an absolute local path, a file:// URL, or an http(s) URL without credentials."""
    require(bool(url), "clone_url", "is required")
    if url.startswith(("https://", "http://")):
        require("@" not in url.split("/")[2], "clone_url", "must not carry credentials; pass access_token")
        return
    path = url.removeprefix("file://")
    require(
        PurePosixPath(path).is_absolute(),
        "clone_url",
        f"{url!r} is neither an absolute path nor an https URL",
    )


EGRESS_POLICIES = ("", "none", "model_apis", "open")


class Sandboxes:
    """Use cases on sandboxes.

    Args:
        records: the sandbox table.
        provider: where sandboxes live.
        agents: agent processes (stopped before a sandbox is destroyed).
        replica: this replica's address, recorded as the owner of the sandboxes it creates
            ("" when one replica owns every sandbox; services/sandbox/api/placement.py).
    """

    def __init__(
        self, records: SandboxRecords, provider: Provider, agents: Agents, *, replica: str = ""
    ) -> None:
        self.replica = replica
        self.records = records
        self.provider = provider
        self.agents = agents
        # Called with the key before a sandbox's files go (e.g. kill its processes).
        self.before_destroy: list[Callable[[SandboxKey], Awaitable[None]]] = []
        # The warm pool (usecases/warm_pool.py), when one is kept: `claim(key, task, repository,
        # egress)` returns a warm sandbox renamed to `key`, or None; `prepared(sandbox)` is told of
        # every task checkout prepared (the repository gets a pool).
        self.claim_warm: Callable[[SandboxKey, str, str, str], Awaitable[Sandbox | None]] | None = None
        self.prepared: Callable[[Sandbox], Awaitable[None]] | None = None

    async def get(self, key: SandboxKey) -> Sandbox:
        """Raises NotFound (`SANDBOX_NOT_FOUND`)."""
        sandbox = await self.records.get_sandbox(key)
        if sandbox is None:
            raise not_found("sandbox", key.name)
        return sandbox

    def owns(self, sandbox: Sandbox) -> bool:
        """Whether this replica holds the sandbox's files and agents."""
        return not sandbox.replica or not self.replica or sandbox.replica == self.replica

    async def running(self, key: SandboxKey) -> Sandbox:
        """The sandbox, required to be RUNNING (FailedPrecondition `SANDBOX_NOT_RUNNING` otherwise)
        and to live on this replica (FailedPrecondition `ON_OTHER_REPLICA`: a second line behind
        api/placement.py, for work that arrives by queue)."""
        sandbox = await self.get(key)
        if not self.owns(sandbox):
            raise on_other_replica(key.name, sandbox.replica)
        if sandbox.state is not SandboxState.RUNNING:
            raise precondition(
                f"sandbox {key.name} is {sandbox.state.value}, not running", "SANDBOX_NOT_RUNNING"
            )
        return sandbox

    async def with_checkout(self, key: SandboxKey) -> Sandbox:
        """The running sandbox, required to have a prepared checkout (FailedPrecondition `NO_CHECKOUT`)."""
        sandbox = await self.running(key)
        if sandbox.checkout is None:
            raise precondition(
                f"sandbox {key.name} has no repository checkout yet; call PrepareRepository", "NO_CHECKOUT"
            )
        return sandbox

    async def list_page(
        self, organization: str, *, show_destroyed: bool, page_size: int, page_token: str
    ) -> tuple[list[Sandbox], str]:
        offset, limit = offset_page(page_size, page_token, default=100, maximum=1000, domain=DOMAIN)
        items = await self.records.list_sandboxes(
            organization, show_destroyed=show_destroyed, offset=offset, limit=limit + 1
        )
        more = len(items) > limit
        return items[:limit], str(offset + limit) if more else ""

    async def create(
        self, key: SandboxKey, *, task: str, repository: str, provider: str, egress: str = ""
    ) -> tuple[Sandbox, bool]:
        """Record the sandbox (PENDING) unless it exists, then have the provider create it (RUNNING).

        Idempotent by key: a repeated call returns the same sandbox with created=False; one left
        PENDING or in ERROR by an earlier attempt is created again. Raises InvalidArgument for bad
        fields and Unavailable when the provider fails (the sandbox is then in ERROR with the message).
        """
        require(
            bool(_TASK.match(task)) and task.startswith(f"organizations/{key.organization}/"),
            "sandbox.task",
            f"must be organizations/{key.organization}/tasks/{{task}}",
        )
        require(
            bool(_REPOSITORY.match(repository))
            and repository.startswith(f"organizations/{key.organization}/"),
            "sandbox.repository",
            f"must be organizations/{key.organization}/repositories/{{repository}}",
        )
        require(
            egress in EGRESS_POLICIES,
            "egress_policy",
            f"must be one of {', '.join(p for p in EGRESS_POLICIES if p)} (or empty for the default)",
        )
        require(
            provider in ("", self.provider.name),
            "sandbox.provider",
            f"unknown provider {provider!r}; this service runs {self.provider.name!r}",
        )
        if self.claim_warm is not None and await self.records.get_sandbox(key) is None:
            claimed = await self.claim_warm(key, task, repository, egress)
            if claimed is not None:
                return claimed, True
        t = now()
        sandbox, created = await self.records.insert_sandbox(
            Sandbox(
                key=key,
                task=task,
                repository=repository,
                provider=self.provider.name,
                provider_sandbox_id="",
                state=SandboxState.PENDING,
                checkout=None,
                error_message="",
                create_time=t,
                update_time=t,
                destroy_time=None,
                version=1,
                replica=self.replica,
                egress=egress,
            )
        )
        if sandbox.replica and sandbox.replica != self.replica:
            # Two creates raced onto two replicas: the row's owner creates it, never this one.
            raise on_other_replica(key.name, sandbox.replica)
        if sandbox.state not in (SandboxState.PENDING, SandboxState.ERROR):
            return sandbox, created
        try:
            provider_id = await self.provider.create(key, egress=egress)
        except Exception as exc:
            await self.records.update_sandbox(
                key, state=SandboxState.ERROR, error_message=f"provider failed: {exc}"
            )
            raise
        sandbox = await self.records.update_sandbox(
            key, state=SandboxState.RUNNING, provider_sandbox_id=provider_id, error_message=""
        )
        log.info("sandbox_created", sandbox=key.name, provider_id=provider_id)
        return sandbox, created

    async def destroy(self, key: SandboxKey, reason: str) -> Sandbox:
        """Stop its agents, remove it at the provider, mark it DESTROYED. Idempotent."""
        sandbox = await self.get(key)
        if sandbox.state is SandboxState.DESTROYED:
            return sandbox
        await self.records.update_sandbox(key, state=SandboxState.DESTROYING)
        await self.agents.stop_sandbox(key)
        for hook in self.before_destroy:
            await hook(key)
        if sandbox.provider_sandbox_id:
            await self.provider.destroy(sandbox.provider_sandbox_id)
        log.info("sandbox_destroyed", sandbox=key.name, reason=reason)
        return await self.records.update_sandbox(key, state=SandboxState.DESTROYED, destroy_time=now())

    async def _warm_is_current(
        self, git: gitops.Git, sandbox: Sandbox, clone_url: str, branch: str, base_branch: str
    ) -> bool:
        """Whether a claimed warm checkout (detached at its base's head, not yet switched) can switch
        to `branch` without a fetch: the remote's base head is still the one checked out and the
        remote has no `branch` of its own. Asked of the remote (`ls-remote`, as the service), never
        of the checkout."""
        current = sandbox.checkout
        if not (sandbox.from_warm_pool and current is not None and current.branch == ""):
            return False
        if base_branch and base_branch != current.base_branch:
            return False
        listed = await git.try_run(
            "ls-remote", "--heads", clone_url, current.base_branch, branch, cwd="", confined=False
        )
        if not listed.ok:
            return False
        heads = {ref: sha for sha, _, ref in (line.partition("\t") for line in listed.stdout.splitlines())}
        return (
            heads.get(f"refs/heads/{current.base_branch}") == current.head_commit
            and f"refs/heads/{branch}" not in heads
        )

    async def prepare(
        self,
        key: SandboxKey,
        *,
        clone_url: str,
        branch: str,
        base_branch: str,
        token: str,
        user_name: str,
        user_email: str,
        detach: bool = False,
    ) -> Sandbox:
        """Clone (first time) or fetch, then `git checkout -B <branch>` from `origin/<branch>` when the
        remote has it, else from `origin/<base_branch>` (the remote's default branch when empty).

        Idempotent: a sandbox already prepared for the same URL and branch is returned as is.
        `detach` (a warm sandbox, usecases/warm_pool.py): `branch` is the base branch, checked out
        detached at its remote head (recorded with branch ""), so any task branch switches from it.
        A sandbox claimed from the warm pool fetches (the head may have moved since) and switches.
        Raises InvalidArgument (URL, branch), FailedPrecondition (sandbox not running; remote
        unusable, with git's message) and Unavailable (git failed, retryable).
        """
        validate_clone_url(clone_url)
        require(bool(branch), "branch", "is required")
        sandbox = await self.running(key)
        current = sandbox.checkout
        if current is not None and current.clone_url == clone_url and current.branch == branch:
            return sandbox
        pid = sandbox.provider_sandbox_id
        git = gitops.Git(self.provider, pid, token)
        # Read-only questions asked at once (short processes on every task's way to ready): the branch
        # names (no base, no question) and whether the checkout exists.
        named = {"branch": branch, "base_branch": base_branch} if base_branch else {"branch": branch}
        *valid, has_repository = await asyncio.gather(
            *(gitops.valid_branch_name(git, name) for name in named.values()), gitops.is_repository(git)
        )
        for (field, name), ok in zip(named.items(), valid, strict=True):
            require(ok, field, f"{name!r} is not a valid branch name")
        local = clone_url.startswith(("/", "file://"))
        if local:
            given = os.path.normpath(clone_url.removeprefix("file://"))  # noqa: ASYNC240 - string-only
            source = await asyncio.to_thread(os.path.realpath, given)
            require(
                not PurePosixPath(source).is_relative_to(self.provider.root("")),
                "clone_url",
                "must not lie inside the sandbox root (another sandbox's checkout)",
            )
            # Repositories are listed with resolved paths: a symlink here was swapped in since.
            require(source == given, "clone_url", f"{given} is (or passes through) a symlink")
        # A fresh clone has no index yet (--force populates it); an existing checkout keeps local changes.
        # A warm checkout of another URL (the repository's was changed) is cloned again.
        stale = current is not None and sandbox.from_warm_pool and current.clone_url != clone_url
        fresh = stale or not has_repository
        force = ["--force"] if fresh else []

        async def exists() -> bool:
            path = clone_url.removeprefix("file://")
            return not local or (await self.provider.exec(pid, ["test", "-e", path], confined=False)).ok

        async def current_warm() -> bool:
            return not fresh and await self._warm_is_current(git, sandbox, clone_url, branch, base_branch)

        # Both asked of the remote at once: does a local one exist; is a claimed warm checkout current?
        found, warm_current = await asyncio.gather(exists(), current_warm())
        require(found, "clone_url", f"{clone_url} does not exist")
        if warm_current:
            pass  # claimed from the warm pool and the remote has not moved since: nothing to fetch
        elif not fresh:
            # Never git as the service in a checkout an agent wrote (its config can redirect URLs or
            # run commands): the service fetches into a fresh repository of its own, and git in the
            # sandbox fetches from there.
            await gitops.fetch_through_service(git, clone_url)
        else:
            await self.provider.remove(pid, WORK)
            await self.provider.remove(pid, f"{WORK}.tmp")
            # Clone next to the final place and rename: a crash never leaves a half clone as `work`.
            await git.run(
                "clone",
                "--no-checkout",
                "--origin",
                "origin",
                clone_url,
                f"{WORK}.tmp",
                cwd="",
                confined=False,
            )
            await self.provider.exec(pid, ["mv", f"{WORK}.tmp", WORK], confined=False)
        # A current warm checkout: ls-remote said the remote has no `branch`.
        existed = False if detach or warm_current else await gitops.remote_branch_exists(git, branch)
        if detach:
            if not await gitops.remote_branch_exists(git, branch):
                raise precondition(
                    f"base branch {branch!r} does not exist in {clone_url}", "BASE_BRANCH_NOT_FOUND"
                )
            switch = [*force, "--detach", f"origin/{branch}"]
            base = branch
        elif existed:
            switch = [*force, "-B", branch, f"origin/{branch}"]
            base = base_branch
        elif warm_current:
            assert current is not None
            base = current.base_branch  # at the head the warm checkout was prepared at
            switch = ["--no-track", "-B", branch, f"origin/{base}"]
        else:
            base = base_branch or await gitops.default_branch(git)
            if not await gitops.remote_branch_exists(git, base):
                raise precondition(
                    f"base branch {base!r} does not exist in {clone_url}", "BASE_BRANCH_NOT_FOUND"
                )
            switch = [*force, "--no-track", "-B", branch, f"origin/{base}"]
        identity = {"user.name": user_name, "user.email": user_email}
        await git.run_configured({k: v for k, v in identity.items() if v}, "checkout", *switch)
        checkout = Checkout(
            clone_url=clone_url,
            branch="" if detach else branch,
            base_branch=base,
            branch_existed=existed,
            path=f"{self.provider.root(pid)}/{WORK}",  # on the host; agents see sandbox_path
            head_commit=current.head_commit
            if warm_current and current is not None
            else await gitops.head_commit(git),
            prepare_time=now(),
        )
        log.info("repository_prepared", sandbox=key.name, branch=branch, existed=existed, base=base)
        prepared = await self.records.update_sandbox(key, checkout=checkout, refresh_git=not detach)
        if not detach and self.prepared is not None:
            await self.prepared(prepared)
        return prepared
