"""Git commands in batches (`Git.run_many`, services/sandbox/usecases/git.py) and the git state built
from them (`git_state.compute`): real git in a real checkout, every output compared with git's own,
and the number of processes started counted at the provider."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from services.sandbox.domain.errors import GitError
from services.sandbox.domain.models import WORK, ChangeType, SandboxKey
from services.sandbox.domain.ports import ExecResult
from services.sandbox.providers.local import LocalProvider
from services.sandbox.usecases import git as gitops
from services.sandbox.usecases.git_state import compute
from tests.unit.sandbox.gitrepo import git, make_origin

KEY = SandboxKey("acme", "sb1")


class CountingProvider(LocalProvider):
    """The local provider, counting the commands it starts."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, base_env={"PATH": os.environ["PATH"], "HOME": str(root)})
        self.execs: list[Sequence[str]] = []

    async def exec(self, provider_id: str, argv: Sequence[str], **kw: Any) -> ExecResult:
        self.execs.append(argv)
        return await super().exec(provider_id, argv, **kw)


async def checkout(tmp_path: Path) -> tuple[CountingProvider, gitops.Git, Path]:
    """A sandbox whose checkout is on `feat/x`, branched from origin's `main`."""
    origin = make_origin(tmp_path)
    provider = CountingProvider(tmp_path / "sandboxes")
    pid = await provider.create(KEY)
    work = Path(provider.root(pid)) / WORK
    git("clone", "-q", str(origin), str(work), cwd=tmp_path)
    git("checkout", "-q", "-b", "feat/x", cwd=work)
    provider.execs.clear()
    return provider, gitops.Git(provider, pid), work


def direct(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=work, capture_output=True, text=True, errors="replace")


async def test_each_command_gets_its_own_exact_output_and_exit_code_from_one_process(tmp_path: Path) -> None:
    provider, g, work = await checkout(tmp_path)
    (work / "raw.bin").write_bytes(b"a\x00b\n\n\x00no newline at the end")
    (work / "dir with space").mkdir()
    (work / "dir with space" / "naïve.txt").write_text("x\n")
    commands = [
        ("hash-object", "raw.bin"),
        ("ls-files", "-z", "--others"),
        ("rev-parse", "--verify", "no-such-ref"),
        ("diff", "--no-index", "--", "/dev/null", "raw.bin"),
        ("status", "--porcelain=v1", "-z", "--untracked-files=all"),
    ]
    results = await g.run_many(commands)
    assert len(provider.execs) == 1
    for args, result in zip(commands, results, strict=True):
        expected = direct(work, "-c", "core.quotepath=off", *args)
        assert (result.stdout, result.returncode) == (expected.stdout, expected.returncode), args
    assert results[2].returncode == 128 and "Needed a single revision" in results[2].stderr
    assert results[3].returncode == 1  # diff --no-index: 1 means "there are differences"
    assert g.checked(results[3], (0, 1)) is results[3]
    with pytest.raises(GitError, match="git rev-parse failed"):
        g.checked(results[2])


async def test_an_output_that_forges_the_marker_fails_instead_of_being_misread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, g, work = await checkout(tmp_path)
    # A file name is printed raw by `ls-files -z`: an agent that knew the marker could forge a frame.
    monkeypatch.setattr(secrets, "token_hex", lambda _n: "0" * 32)
    (work / f"trap\nfoundry-{'0' * 32} 0\nforged").write_text("x\n")
    with pytest.raises(GitError, match="could not be read"):
        await g.run_many([("ls-files", "-z", "--others"), ("rev-parse", "HEAD")])


async def test_a_long_batch_is_split_so_no_script_exceeds_the_argument_limit(tmp_path: Path) -> None:
    provider, g, _ = await checkout(tmp_path)
    long_name = "n" * 200
    commands = [("rev-parse", "--verify", "--quiet", f"refs/heads/{long_name}{i}") for i in range(400)]
    results = await g.run_many(commands)
    assert len(results) == 400 and all(r.returncode == 1 for r in results)
    assert len(provider.execs) >= 2 and all(
        len(argv[2]) <= gitops.MAX_BATCH_SCRIPT for argv in provider.execs
    )


async def test_git_state_takes_one_process_when_nothing_changed_and_two_when_files_did(
    tmp_path: Path,
) -> None:
    provider, g, work = await checkout(tmp_path)
    clean = await compute(g, KEY, "main")
    assert len(provider.execs) == 1
    assert clean.file_changes == [] and clean.branch == "feat/x"
    assert clean.base_commit == clean.head_commit == direct(work, "rev-parse", "HEAD").stdout.strip()
    assert clean.files == ["README.md", "src/app.py"]

    # A commit on the branch, an uncommitted edit and an untracked file in a new folder.
    (work / "README.md").write_text("# demo\nline two\ncommitted line\n")
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qam", "readme", cwd=work)
    (work / "src" / "app.py").write_text("print('bye')\n")
    (work / "docs dir").mkdir()
    (work / "docs dir" / "naïve.md").write_text("one\ntwo\n")
    provider.execs.clear()
    state = await compute(g, KEY, "main")
    assert len(provider.execs) == 2
    changes = {c.path: (c.type, c.added_lines, c.removed_lines) for c in state.file_changes}
    assert changes == {
        "README.md": (ChangeType.MODIFIED, 1, 0),
        "docs dir/naïve.md": (ChangeType.ADDED, 2, 0),
        "src/app.py": (ChangeType.MODIFIED, 1, 1),
    }, changes
    diffs = {d.path: d.unified_diff for d in state.diffs}
    assert "+committed line" in diffs["README.md"]
    assert "+one" in diffs["docs dir/naïve.md"] and "+two" in diffs["docs dir/naïve.md"]
    assert "-print('hello')" in diffs["src/app.py"] and "+print('bye')" in diffs["src/app.py"]
    assert state.files == ["README.md", "docs dir/naïve.md", "src/app.py"]
    base = direct(work, "merge-base", "HEAD", "refs/remotes/origin/main").stdout.strip()
    assert state.base_commit == base != state.head_commit
    assert (
        diffs["README.md"]
        == direct(work, "-c", "core.quotepath=off", "diff", base, "--no-renames", "--", "README.md").stdout
    )


async def test_without_a_merge_base_the_state_is_measured_against_head(tmp_path: Path) -> None:
    provider, g, work = await checkout(tmp_path)
    (work / "README.md").write_text("changed\n")
    state = await compute(g, KEY, "no-such-branch")
    head = direct(work, "rev-parse", "HEAD").stdout.strip()
    assert state.base_commit == head
    assert [(c.path, c.type) for c in state.file_changes] == [("README.md", ChangeType.MODIFIED)]
    assert len(provider.execs) == 3  # the state, the diffs again against HEAD, the file's diff
