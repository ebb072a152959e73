"""Derive a checkout's git state: changed files (M/A/D with +/- counts), per-file diffs, file tree.

Changes are measured against the task's base: the merge-base of HEAD and `origin/<base branch>`, so
the branch's commits and its uncommitted work (staged and unstaged) show together, and a commit made
by the agent does not make its work vanish. Without a base (no such remote branch, unrelated
histories) HEAD is the base. Untracked files count as added, with a new-file diff. Renames are not
detected (`--no-renames`): a moved file is a D and an A.
"""

from __future__ import annotations

from services.platform.clock import now
from services.sandbox.domain.errors import RemoteUnusable
from services.sandbox.domain.models import ChangeType, FileChange, FileDiff, GitState, SandboxKey
from services.sandbox.usecases.git import Git, default_branch

MAX_DIFF_BYTES = 256 * 1024
MAX_DIFFED_FILES = 300
MAX_TOTAL_DIFF_BYTES = 4 * 1024 * 1024  # keeps GitStateUpdated well under broker message limits


def parse_status(output: str) -> dict[str, tuple[ChangeType, bool]]:
    """`git status --porcelain=v1 -z --no-renames` → {path: (type, untracked)}."""
    changes: dict[str, tuple[ChangeType, bool]] = {}
    for entry in output.split("\0"):
        if len(entry) < 4:
            continue
        xy, path = entry[:2], entry[3:]
        if xy == "??":
            changes[path] = (ChangeType.ADDED, True)
        elif "D" in xy:
            changes[path] = (ChangeType.DELETED, False)
        elif "A" in xy:
            changes[path] = (ChangeType.ADDED, False)
        elif xy != "!!":
            changes[path] = (ChangeType.MODIFIED, False)
    return changes


def parse_name_status(output: str) -> dict[str, ChangeType]:
    """`git diff --name-status -z --no-renames` → {path: type}."""
    parts = output.split("\0")
    changes: dict[str, ChangeType] = {}
    for letter, path in zip(parts[::2], parts[1::2], strict=False):
        if not path:
            continue
        if letter.startswith("D"):
            changes[path] = ChangeType.DELETED
        elif letter.startswith("A"):
            changes[path] = ChangeType.ADDED
        else:
            changes[path] = ChangeType.MODIFIED
    return changes


def parse_numstat(output: str) -> dict[str, tuple[int, int, bool]]:
    """`git diff --numstat -z --no-renames` → {path: (added, removed, binary)}."""
    stats: dict[str, tuple[int, int, bool]] = {}
    for entry in output.split("\0"):
        parts = entry.split("\t", 2)
        if len(parts) != 3:
            continue
        added, removed, path = parts
        binary = added == "-"
        stats[path.strip("\n")] = (0 if binary else int(added), 0 if binary else int(removed), binary)
    return stats


def directories_of(files: list[str]) -> list[str]:
    """Every parent directory of `files` (`a/b/c.txt` → `a`, `a/b`), sorted."""
    dirs: set[str] = set()
    for path in files:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    return sorted(dirs)


def _cut(diff: str, limit: int) -> tuple[str, bool]:
    data = diff.encode()
    if len(data) <= limit:
        return diff, False
    return data[:limit].decode(errors="ignore"), True


async def base_commit(git: Git, base_branch: str) -> str:
    """The merge-base of HEAD and `origin/<base_branch>`; HEAD when there is none."""
    if base_branch:
        found = await git.try_run("merge-base", "HEAD", f"refs/remotes/origin/{base_branch}")
        if found.ok and found.stdout.strip():
            return found.stdout.strip()
    return (await git.run("rev-parse", "HEAD")).stdout.strip()


async def compute(git: Git, key: SandboxKey, base_branch: str = "") -> GitState:
    """Run git in the checkout and build its state against `base_branch` (see the module docstring).
    Raises GitError / RemoteUnusable on git failures."""
    if not base_branch:  # a task on a branch that already existed may name no base: the default one
        try:
            base_branch = await default_branch(git)
        except RemoteUnusable:
            base_branch = ""
    base = await base_commit(git, base_branch)
    untracked_status = parse_status(
        (await git.run("status", "--porcelain=v1", "-z", "--no-renames", "--untracked-files=all")).stdout
    )
    status: dict[str, tuple[ChangeType, bool]] = {
        path: (change, False)
        for path, change in parse_name_status(
            (await git.run("diff", base, "--name-status", "-z", "--no-renames")).stdout
        ).items()
    }
    status.update({p: v for p, v in untracked_status.items() if v[1]})
    tracked = parse_numstat((await git.run("diff", base, "--numstat", "-z", "--no-renames")).stdout)
    changes: list[FileChange] = []
    diffs: list[FileDiff] = []
    budget = MAX_TOTAL_DIFF_BYTES
    for index, path in enumerate(sorted(status)):
        change_type, untracked = status[path]
        if untracked:
            stat = parse_numstat(
                (
                    await git.run(
                        "diff", "--no-index", "--numstat", "-z", "--", "/dev/null", path, ok_codes=(0, 1)
                    )
                ).stdout
            )
            added, removed, binary = next(iter(stat.values()), (0, 0, False))
        else:
            added, removed, binary = tracked.get(path, (0, 0, False))
        changes.append(FileChange(path, change_type, added, removed, binary))
        if index >= MAX_DIFFED_FILES or budget <= 0:
            diffs.append(FileDiff(path, "", True))
            continue
        if untracked:
            text = (await git.run("diff", "--no-index", "--", "/dev/null", path, ok_codes=(0, 1))).stdout
        else:
            text = (await git.run("diff", base, "--no-renames", "--", path)).stdout
        cut, truncated = _cut(text, min(MAX_DIFF_BYTES, budget))
        budget -= len(cut.encode())
        diffs.append(FileDiff(path, cut, truncated))
    listed = (await git.run("ls-files", "-z", "--cached", "--others", "--exclude-standard")).stdout
    deleted = {p for p, (t, _) in status.items() if t is ChangeType.DELETED}
    files = sorted({p for p in listed.split("\0") if p and p not in deleted})
    branch = (await git.try_run("symbolic-ref", "--short", "HEAD")).stdout.strip()
    head = (await git.run("rev-parse", "HEAD")).stdout.strip()
    return GitState(
        sandbox=key,
        branch=branch,
        head_commit=head,
        base_branch=base_branch,
        base_commit=base,
        file_changes=changes,
        diffs=diffs,
        files=files,
        directories=directories_of(files),
        compute_time=now(),
    )
