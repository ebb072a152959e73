"""Pure rules: titles, branch names, the provisioning stage machine and computed task status."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from services.task.domain.errors import require
from services.task.domain.models import INIT_STATUSES, Session

TITLE_TYPES = ("feat", "fix", "docs", "refactor")
SUMMARY_MAX = 62
_EXPLICIT_TYPE = re.compile(r"^\s*(feat|fix|docs|refactor)\s*:\s*(.*)$", re.IGNORECASE | re.DOTALL)
_FIX_WORDS = re.compile(
    r"\b(fix|fixes|fixed|bug|bugs|broken|crash|crashes|error|errors|fail|failing|regression|issue)\b", re.I
)
_DOCS_WORDS = re.compile(r"\b(docs?|documentation|readme|docstrings?|comments?|changelog|typos?)\b", re.I)
_REFACTOR_WORDS = re.compile(
    r"\b(refactor|refactoring|rename|cleanup|clean up|restructure|simplify|extract|reorganize|tidy)\b", re.I
)
_BRANCH_OK = re.compile(r"^[A-Za-z0-9._/-]+$")


def infer_type(prompt: str) -> str:
    """`fix` for bug words, `docs` for documentation words, `refactor` for restructuring, else `feat`."""
    if _FIX_WORDS.search(prompt):
        return "fix"
    if _DOCS_WORDS.search(prompt):
        return "docs"
    if _REFACTOR_WORDS.search(prompt):
        return "refactor"
    return "feat"


def _summary(text: str) -> str:
    """The first line, whitespace collapsed, trailing punctuation dropped, cut at a word ≤ 62 chars."""
    line = " ".join(text.strip().splitlines()[0].split()) if text.strip() else ""
    line = line.rstrip(" .!?;:")
    if len(line) > SUMMARY_MAX:
        cut = line[: SUMMARY_MAX + 1]
        line = cut[: cut.rfind(" ")] if " " in cut[20:] else line[:SUMMARY_MAX]
        line = line.rstrip(" .,;:-")
    return line[:1].lower() + line[1:] if line[:2] != line[:2].upper() else line


def resolve_title(prompt: str, explicit: str = "") -> str:
    """The task title: an explicit title is kept as given; otherwise `<type>: <summary ≤ 62 chars>`
    from the prompt, where an explicit `type:` prefix of the prompt is kept and otherwise inferred."""
    if explicit.strip():
        return explicit.strip()
    m = _EXPLICIT_TYPE.match(prompt)
    if m:
        kind, rest = m.group(1).lower(), m.group(2)
    else:
        kind, rest = infer_type(prompt), prompt
    summary = _summary(rest) or "task"
    return f"{kind}: {summary}"


def branch_prefix(title: str) -> str:
    """The prefix of a generated branch: `<type>/<slug of the summary>` (≤ 48 chars)."""
    kind, _, summary = title.partition(":")
    kind = kind.strip().lower() if kind.strip().lower() in TITLE_TYPES else "task"
    slug = re.sub(r"[^a-z0-9]+", "-", (summary or title).lower()).strip("-")[:40].rstrip("-")
    return f"{kind}/{slug or 'task'}"


def validate_branch(branch: str, field: str = "task.branch") -> None:
    """Raise INVALID_ARGUMENT unless `branch` is a usable git branch name."""
    require(0 < len(branch) <= 200, field, "must be 1 to 200 characters")
    require(bool(_BRANCH_OK.match(branch)), field, "may contain only letters, digits, '.', '_', '-' and '/'")
    require(
        not (
            branch.startswith(("/", "-", "."))
            or branch.endswith(("/", ".", ".lock"))
            or ".." in branch
            or "//" in branch
        ),
        field,
        "is not a valid git branch name",
    )


@dataclass(frozen=True)
class Step:
    """One provisioning step: the task status while it runs, the stage recorded when it starts
    (None = unchanged) and the stage recorded when it completes."""

    name: str
    status: str
    started_stage: str | None
    done_stage: str


STEPS: dict[str, Step] = {
    "queued": Step("create_sandbox", "init_create_sandbox", None, "sandbox_allocated"),
    "sandbox_allocated": Step("prepare_repository", "init_prepare_repository", None, "repo_prepared"),
    "repo_prepared": Step("start_agent", "init_ensure_agent", "agent_starting", "agent_ready"),
    "agent_starting": Step("start_agent", "init_ensure_agent", None, "agent_ready"),
    "agent_ready": Step("create_session", "init_create_session", "session_creating", "ready"),
    "session_creating": Step("create_session", "init_create_session", None, "ready"),
}


def next_step(stage: str) -> Step | None:
    """The step to run after the last completed `stage`; None when provisioning is over."""
    return STEPS.get(stage)


def computed_status(stored: str, stage: str, sessions: Sequence[Session]) -> str:
    """The task status from its stored status, provisioning stage and open sessions.

    `init_*` (before complete), archiving/killing, ended statuses and a provisioning `error` stay as
    they are; otherwise `running` if any open session is working, `error` if any open session
    failed, else `idle`."""
    recomputable = stored in ("init_complete", "idle", "running") or (stored == "error" and stage == "ready")
    if stored in INIT_STATUSES[:-1] or not recomputable:
        return stored
    open_sessions = [s for s in sessions if not s.closed]
    if any(s.status == "running" for s in open_sessions):
        return "running"
    if any(s.status == "error" for s in open_sessions):
        return "error"
    return "idle"
