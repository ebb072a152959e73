"""Resume tokens are opaque, scope-bound and strictly parsed."""

from __future__ import annotations

import pytest

from services.platform.watch import BadToken, TokenCodec


def test_token_round_trips_its_version() -> None:
    codec = TokenCodec("task:organizations/acme/tasks/t-1")
    assert [codec.decode(codec.encode(v)) for v in (0, 1, 2**40)] == [0, 1, 2**40]


def test_tokens_of_different_scopes_differ_and_are_rejected_as_foreign() -> None:
    acme, other = TokenCodec("org_summary:acme"), TokenCodec("org_summary:other")
    assert acme.encode(7) != other.encode(7)
    with pytest.raises(BadToken) as caught:
        acme.decode(other.encode(7))
    assert caught.value.reason == "foreign_scope"


@pytest.mark.parametrize(
    "token", ["", "7", "v2.abcdefabcdef.7", "v1.abcdefabcdef.-1", "v1.abcdefabcdef.٣", "v1..7"]
)
def test_malformed_tokens_are_rejected(token: str) -> None:
    with pytest.raises(BadToken) as caught:
        TokenCodec("org_summary:acme").decode(token)
    assert caught.value.reason == "malformed"
