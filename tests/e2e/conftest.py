"""End-to-end settings shared by the browser tests."""

from __future__ import annotations

import contextlib

with contextlib.suppress(ImportError):
    from playwright.async_api import expect

    # A web-first assertion waits for the page (the mesh syncs, provisions, answers); Playwright's
    # 5 s default is too short when the 2-core CI machine also runs the services under test.
    expect.set_options(timeout=20_000)
