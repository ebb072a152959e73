"""The pattern-based resource-name parser (AIP-122) every service's `domain/names.py` builds on."""

from __future__ import annotations

import grpc
import pytest

from services.platform.errors import InvalidArgument
from services.platform.names import ID, IdRule, ResourcePattern, id_rule

SESSION = ResourcePattern("organizations/{organization}/tasks/{task}/sessions/{session}")
ORG_ID = IdRule(r"[a-z0-9][a-z0-9-]{0,62}", "1-63 of [a-z0-9-]")
TASK = ResourcePattern(
    "organizations/{organization}/tasks/{task}",
    rules={"organization": ORG_ID},
    domain="foundry.test",
    reason="INVALID_NAME",
)
GIT_STATE = ResourcePattern("organizations/{organization}/sandboxes/{sandbox}/gitState")


def test_a_matching_name_parses_into_its_ids_in_pattern_order() -> None:
    assert SESSION.parse("organizations/acme/tasks/t-1/sessions/s_2") == ("acme", "t-1", "s_2")
    assert GIT_STATE.parse("organizations/acme/sandboxes/sb.1/gitState") == ("acme", "sb.1")
    assert SESSION.variables == ("organization", "task", "session")


@pytest.mark.parametrize(
    "name",
    [
        "organizations/acme/tasks/t1/sessions",  # missing the last segment
        "organizations/acme/tasks/t1",  # a parent, not a session
        "organizations/acme/tasks/t1/sessions/s1/messages/m1",  # a child, not a session
        "organizations/acme/sessions/s1/tasks/t1",  # collections in the wrong order
        "organizations/acme/task/t1/sessions/s1",  # wrong collection id (singular)
        "Organizations/acme/tasks/t1/sessions/s1",  # collection ids are case-sensitive
        "organizations/acme/tasks//sessions/s1",  # empty id
        "organizations/acme/tasks/t1/sessions/s1/",  # trailing slash
        "/organizations/acme/tasks/t1/sessions/s1",  # leading slash
        "organizations/acme/tasks/-t1/sessions/s1",  # an id must start with a letter or digit
        "organizations/acme/tasks/t 1/sessions/s1",  # space in an id
        "organizations/acme/tasks/t1/sessions/s1\n",  # a trailing newline (`$` would let it through)
        "",
    ],
)
def test_a_name_that_does_not_match_is_invalid_argument_naming_the_field_and_the_pattern(name: str) -> None:
    assert SESSION.match(name) is None
    with pytest.raises(InvalidArgument) as err:
        SESSION.parse(name, "session.name")
    error = err.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_ARGUMENT" and error.domain == "foundry"
    assert list(error.field_violations) == ["session.name"]
    assert error.message.startswith("session.name: must look like ")
    assert "organizations/{organization}/tasks/{task}/sessions/{session}" in error.message
    assert repr(name) in error.message


def test_the_service_supplies_the_rule_of_an_id_the_domain_and_the_reason() -> None:
    assert TASK.parse("organizations/acme-1/tasks/T.1") == ("acme-1", "T.1")
    with pytest.raises(InvalidArgument) as err:
        TASK.parse("organizations/ACME/tasks/t1", "parent")  # upper case: fine for ID, not for ORG_ID
    assert err.value.reason == "INVALID_NAME" and err.value.domain == "foundry.test"
    assert "{organization} must be 1-63 of [a-z0-9-]" in err.value.message
    assert list(err.value.field_violations) == ["parent"]
    with pytest.raises(InvalidArgument):
        TASK.parse("organizations/" + "a" * 64 + "/tasks/t1")


def test_the_default_rule_bounds_the_length_of_an_id() -> None:
    assert SESSION.parse(f"organizations/acme/tasks/{'t' * 128}/sessions/s1")[1] == "t" * 128
    assert SESSION.match(f"organizations/acme/tasks/{'t' * 129}/sessions/s1") is None
    short = ResourcePattern("tasks/{task}", default=id_rule(100))
    assert short.match("tasks/" + "t" * 100) == ("t" * 100,)
    assert short.match("tasks/" + "t" * 101) is None
    assert ID.matches("a") and not ID.matches("") and not ID.matches("a/b")


def test_a_very_long_bad_name_is_not_repeated_in_full() -> None:
    name = "organizations/" + "x/" * 10_000
    with pytest.raises(InvalidArgument) as err:
        SESSION.parse(name)
    assert len(err.value.message) < 500


def test_format_builds_the_name_from_ids_in_order_or_by_variable() -> None:
    assert SESSION.format("acme", "t1", "s1") == "organizations/acme/tasks/t1/sessions/s1"
    assert SESSION.format(session="s1", organization="acme", task="t1") == (
        "organizations/acme/tasks/t1/sessions/s1"
    )
    pr = ResourcePattern("repositories/{repository}/pullRequests/{number}")
    assert pr.format("r1", 7) == "repositories/r1/pullRequests/7"
    assert GIT_STATE.format("acme", "sb") == "organizations/acme/sandboxes/sb/gitState"


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("acme", "t1"), {}),  # too few
        (("acme", "t1", "s1", "x"), {}),  # too many
        ((), {"organization": "acme", "task": "t1"}),  # missing session
        ((), {"organization": "acme", "task": "t1", "session": "s1", "turn": "u"}),  # unknown
        (("acme",), {"task": "t1", "session": "s1"}),  # both ways at once
    ],
)
def test_format_with_the_wrong_ids_is_a_programming_error(
    args: tuple[str, ...], kwargs: dict[str, str]
) -> None:
    with pytest.raises(TypeError):
        SESSION.format(*args, **kwargs)


@pytest.mark.parametrize(
    "name",
    [
        "organizations/acme/tasks/t1/sessions/s1",
        "organizations/a.b_c-d/tasks/0/sessions/Z9",
    ],
)
def test_round_trip(name: str) -> None:
    ids = SESSION.parse(name)
    assert SESSION.format(*ids) == name
    assert SESSION.parse(SESSION.format(*ids)) == ids
    assert SESSION.format(**dict(zip(SESSION.variables, ids, strict=True))) == name


@pytest.mark.parametrize(
    ("pattern", "rules"),
    [
        ("organizations//tasks/{task}", {}),  # empty segment
        ("organizations/{organization}/tasks/{organization}", {}),  # a variable twice
        ("organizations/{organization", {}),  # unbalanced brace
        ("organizations/{org}{task}", {}),  # two variables in one segment
        ("organizations/{Organization}", {}),  # variables are snake_case
        ("organization-ids/{organization}", {}),  # collection ids are camelCase words
        ("organizations/{organization}", {"task": ID}),  # a rule for a variable it does not have
    ],
)
def test_a_malformed_pattern_is_refused_when_it_is_built(pattern: str, rules: dict[str, IdRule]) -> None:
    with pytest.raises(ValueError):
        ResourcePattern(pattern, rules=rules)


def test_parsed_names_are_remembered_without_letting_a_bad_name_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A name parsed before answers from memory (the same ids); a bad name is refused every time,
    and the memory is bounded."""
    import services.platform.names as names

    pattern = ResourcePattern("organizations/{organization}/tasks/{task}", rules={"organization": ORG_ID})
    good = "organizations/acme/tasks/t-1"
    assert pattern.parse(good) == pattern.parse(good) == ("acme", "t-1")
    for _ in range(2):
        with pytest.raises(InvalidArgument):
            pattern.parse("organizations/ACME/tasks/t-1")
    monkeypatch.setattr(names, "_PARSED_MAX", 3)
    for n in range(10):
        assert pattern.parse(f"organizations/acme/tasks/t{n}") == ("acme", f"t{n}")
    assert len(pattern._parsed) <= 3
