"""Request header fields too large (cookies included): 431 with the API's JSON error body over a real
socket, whether the header block outgrows the HTTP parser's buffer before it ends (uvicorn answered a
plain-text 400 there) or arrives whole (it reached the routes). A block just under the limit is served."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from gateway.headers import MAX_HEADER_BYTES
from tests.unit.gateway.harness import running


async def _exchange(port: int, request: bytes, *, end_headers: bool) -> tuple[int, dict[str, str], bytes]:
    """Send `request` on a fresh connection (its header block left open unless `end_headers`) and read
    the whole answer: status, headers, body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request + (b"\r\n" if end_headers else b""))
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
        body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 10)
        return int(status_line.split()[1]), headers, body
    finally:
        writer.close()


def _request(cookie_bytes: int) -> bytes:
    return (
        b"GET /v1/organizations HTTP/1.1\r\nHost: gateway\r\nAccept: application/json\r\n"
        b"Cookie: big=" + b"c" * cookie_bytes + b"\r\n"
    )


async def test_header_fields_too_large_get_431_with_the_json_error_shape(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        port = h.gateway.port
        cases = {
            "outgrows the parser's buffer": (_request(4 * MAX_HEADER_BYTES), False),
            "arrives whole": (_request(MAX_HEADER_BYTES + 1024), True),
        }
        for case, (request, end_headers) in cases.items():
            status, headers, body = await _exchange(port, request, end_headers=end_headers)
            assert status == 431, (case, status, body[:300])
            assert headers["content-type"].startswith("application/json"), (case, headers)
            error = json.loads(body)
            assert error["status"] == "INVALID_ARGUMENT", (case, error)
            assert error["details"][0]["reason"] == "HEADERS_TOO_LARGE", (case, error)
            assert str(MAX_HEADER_BYTES) in error["message"], (case, error)

        status, _, body = await _exchange(port, _request(MAX_HEADER_BYTES - 1024), end_headers=True)
        assert status == 401, body[:300]  # served: no session, the route's own answer
