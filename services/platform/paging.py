"""AIP-158 paging where the page token is the offset of the next page (lists that are small and
ordered by a stable key). Lists that page by a key (`after_login`, `after_seq`) keep their own token."""

from __future__ import annotations

from services.platform.errors import require


def offset_page(
    page_size: int, page_token: str, *, default: int, maximum: int, domain: str = "foundry"
) -> tuple[int, int]:
    """(offset, limit) for a request: `page_size` 0 means `default`, anything above `maximum` is capped.

    Raises InvalidArgument (nothing read) for a negative `page_size` or a token this API did not issue.
    """
    require(page_size >= 0, "page_size", "must not be negative", domain=domain)
    require(
        page_token == "" or page_token.isdigit(),
        "page_token",
        "is not a token this method returned",
        domain=domain,
    )
    return int(page_token or 0), min(page_size or default, maximum)
