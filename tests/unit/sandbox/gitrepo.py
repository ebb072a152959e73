"""Real git repositories for sandbox tests: a bare `origin` with a default branch and one feature branch."""

from __future__ import annotations

import subprocess
from pathlib import Path

_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "PATH": "/usr/bin:/bin",
    "HOME": "/tmp",
}


def git(*args: str, cwd: Path) -> str:
    """Run git synchronously; returns stdout, raises CalledProcessError with git's message."""
    return subprocess.run(
        ["git", *args], cwd=cwd, env=_ENV, check=True, capture_output=True, text=True
    ).stdout


def make_origin(tmp: Path) -> Path:
    """A bare repository `origin.git` (default branch `main`: README.md, src/app.py) that also has a
    branch `feature/existing` with one more file, `feature.txt`."""
    seed = tmp / "seed"
    seed.mkdir()
    git("init", "-q", "-b", "main", cwd=seed)
    (seed / "README.md").write_text("# demo\nline two\n")
    (seed / "src").mkdir()
    (seed / "src" / "app.py").write_text("print('hello')\n")
    git("add", ".", cwd=seed)
    git("commit", "-q", "-m", "initial", cwd=seed)
    git("checkout", "-q", "-b", "feature/existing", cwd=seed)
    (seed / "feature.txt").write_text("feature work\n")
    git("add", ".", cwd=seed)
    git("commit", "-q", "-m", "feature", cwd=seed)
    git("checkout", "-q", "main", cwd=seed)
    origin = tmp / "origin.git"
    git("clone", "-q", "--bare", str(seed), str(origin), cwd=tmp)
    return origin
