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


def _diffs(*against: str) -> list[tuple[str, ...]]:
    return [
        ("diff", *against, "--name-status", "-z", "--no-renames"),
        ("diff", *against, "--numstat", "-z", "--no-renames"),
    ]


_HEAD = [
    ("rev-parse", "HEAD"),
    ("symbolic-ref", "--short", "HEAD"),
    ("status", "--porcelain=v1", "-z", "--no-renames", "--untracked-files=all"),
    ("ls-files", "-z", "--cached", "--others", "--exclude-standard"),
]


async def compute(git: Git, key: SandboxKey, base_branch: str = "") -> GitState:
    """Run git in the checkout and build its state against `base_branch` (see the module docstring).
    Raises GitError / RemoteUnusable on git failures.

    It runs after every turn and on every task's way to ready, so the commands go in two batches of
    one confined process each (`Git.run_many`): the state of the checkout, then the diff of each
    changed file (none when nothing changed). `git diff --merge-base` (git 2.30) diffs against the
    merge-base in the first batch; without one, the diffs are asked again against HEAD."""
    if not base_branch:  # a task on a branch that already existed may name no base: the default one
        try:
            base_branch = await default_branch(git)
        except RemoteUnusable:
            base_branch = ""
    base_ref = f"refs/remotes/origin/{base_branch}"
    if base_branch:
        merge_base, name_status, numstat, *rest = await git.run_many(
            [("merge-base", "HEAD", base_ref), *_diffs("--merge-base", base_ref), *_HEAD]
        )
    else:
        merge_base = None
        name_status, numstat, *rest = await git.run_many([*_diffs("HEAD"), *_HEAD])
    head_rev, symbolic, untracked_run, listed = rest
    head = git.checked(head_rev).stdout.strip()
    base = merge_base.stdout.strip() if merge_base is not None and merge_base.ok else ""
    if not base:  # no base branch, or no merge-base with it: HEAD is the base
        if merge_base is not None:
            name_status, numstat = await git.run_many(_diffs("HEAD"))
        base = head
    untracked_status = parse_status(git.checked(untracked_run).stdout)
    status: dict[str, tuple[ChangeType, bool]] = {
        path: (change, False) for path, change in parse_name_status(git.checked(name_status).stdout).items()
    }
    status.update({p: v for p, v in untracked_status.items() if v[1]})
    tracked = parse_numstat(git.checked(numstat).stdout)
    paths = sorted(status)
    # Untracked files: a count for every one; the text of the first MAX_DIFFED_FILES changed files.
    # One batch; `counted` and `texts` say where each file's answers are in it.
    asked: list[tuple[str, ...]] = []
    counted: dict[str, int] = {}
    texts: dict[str, int] = {}
    for path in paths:
        if status[path][1]:
            counted[path] = len(asked)
            asked.append(("diff", "--no-index", "--numstat", "-z", "--", "/dev/null", path))
    for path in paths[:MAX_DIFFED_FILES]:
        texts[path] = len(asked)
        untracked = status[path][1]
        asked.append(
            ("diff", "--no-index", "--", "/dev/null", path)
            if untracked
            else ("diff", base, "--no-renames", "--", path)
        )
    answers = await git.run_many(asked) if asked else []
    changes: list[FileChange] = []
    diffs: list[FileDiff] = []
    budget = MAX_TOTAL_DIFF_BYTES
    for path in paths:
        change_type, untracked = status[path]
        if untracked:
            stat = parse_numstat(git.checked(answers[counted[path]], (0, 1)).stdout)
            added, removed, binary = next(iter(stat.values()), (0, 0, False))
        else:
            added, removed, binary = tracked.get(path, (0, 0, False))
        changes.append(FileChange(path, change_type, added, removed, binary))
        if path not in texts or budget <= 0:
            diffs.append(FileDiff(path, "", True))
            continue
        text = git.checked(answers[texts[path]], (0, 1) if untracked else (0,)).stdout
        cut, truncated = _cut(text, min(MAX_DIFF_BYTES, budget))
        budget -= len(cut.encode())
        diffs.append(FileDiff(path, cut, truncated))
    deleted = {p for p, (t, _) in status.items() if t is ChangeType.DELETED}
    files = sorted({p for p in git.checked(listed).stdout.split("\0") if p and p not in deleted})
    branch = symbolic.stdout.strip() if symbolic.ok else ""
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
