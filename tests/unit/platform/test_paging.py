"""Offset paging (AIP-158) shared by the services' list methods."""

from __future__ import annotations

import grpc
import pytest

from services.platform.errors import InvalidArgument
from services.platform.paging import offset_page


def test_empty_request_gets_the_default_size_from_the_start() -> None:
    assert offset_page(0, "", default=50, maximum=500) == (0, 50)


def test_page_size_is_capped_and_the_token_is_the_offset() -> None:
    assert offset_page(10_000, "120", default=50, maximum=500) == (120, 500)


@pytest.mark.parametrize(("size", "token", "field"), [(-1, "", "page_size"), (10, "abc", "page_token")])
def test_bad_paging_fields_are_invalid_argument_naming_the_field(size: int, token: str, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        offset_page(size, token, default=50, maximum=500, domain="foundry.task")
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert list(err.value.field_violations) == [field]
    assert err.value.domain == "foundry.task"
