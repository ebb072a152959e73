"""Title and branch rules (pure functions)."""

from __future__ import annotations

import pytest

from services.platform.errors import InvalidArgument
from services.task.domain.models import Session
from services.task.domain.rules import branch_prefix, computed_status, resolve_title, validate_branch


@pytest.mark.parametrize(
    ("prompt", "title"),
    [
        ("Add a login page", "feat: add a login page"),
        ("Fix the crash when saving empty files", "fix: fix the crash when saving empty files"),
        ("Update the README with install steps", "docs: update the README with install steps"),
        (
            "Refactor the billing module into smaller parts",
            "refactor: refactor the billing module into smaller parts",
        ),
        ("docs: explain the watch contract", "docs: explain the watch contract"),
        ("FIX: off-by-one in pagination", "fix: off-by-one in pagination"),
    ],
)
def test_title_has_inferred_or_explicit_type(prompt: str, title: str) -> None:
    assert resolve_title(prompt) == title


def test_title_summary_is_cut_at_a_word_within_62_characters() -> None:
    title = resolve_title("Add " + "wonderful " * 20 + "things\nsecond line ignored")
    kind, _, summary = title.partition(": ")
    assert kind == "feat"
    assert 0 < len(summary) <= 62
    assert not summary.endswith(" ") and "second" not in summary and summary.split()[-1] == "wonderful"


def test_explicit_title_is_kept_as_given() -> None:
    assert resolve_title("whatever", "My Title") == "My Title"


def test_branch_prefix_is_type_and_slug() -> None:
    assert branch_prefix("feat: Add a login page!") == "feat/add-a-login-page"


@pytest.mark.parametrize("branch", ["", "-x", "a..b", "a b", "x.lock", "a//b", "ends/"])
def test_invalid_branch_names_are_rejected(branch: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_branch(branch)


def _session(status: str) -> Session:
    return Session(
        id="s", task_id="t", organization="o", position=1, display_name="S", agent="", model="", status=status
    )


def test_status_is_running_if_any_session_works_and_error_if_any_failed() -> None:
    assert computed_status("idle", "ready", [_session("idle"), _session("running")]) == "running"
    assert computed_status("running", "ready", [_session("idle"), _session("error")]) == "error"
    assert computed_status("error", "ready", [_session("idle")]) == "idle"
    assert computed_status("init_complete", "ready", [_session("ready")]) == "idle"
    assert computed_status("error", "error", [_session("idle")]) == "error"
    assert computed_status("init_create_sandbox", "queued", [_session("running")]) == "init_create_sandbox"
    assert computed_status("archived", "ready", [_session("running")]) == "archived"
