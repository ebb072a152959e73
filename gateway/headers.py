"""Request header fields too large: 431 in the API's JSON error shape (RFC 6585), whichever layer
notices first.

- uvicorn's h11 parser holds at most `MAX_HEADER_BYTES` of a request whose header block has not ended
  yet; beyond that uvicorn answered a plain-text 400 "Invalid HTTP request received." `H11Protocol`
  answers 431 with the JSON body instead (h11's own hint for that error is 431).
- A header block that arrived whole is parsed whatever its size, so `EdgeMiddleware` refuses one
  larger than the same limit (`headers_too_large`) before anything else reads it.
16 KiB is h11's default and Node's; browsers send a few KiB (the gateway's own cookies are small).
"""

from __future__ import annotations

import grpc
import h11
from uvicorn.protocols.http.h11_impl import H11Protocol as _UvicornH11Protocol

from gateway.codec import dumps
from gateway.errors import GatewayError, gateway_error_body

MAX_HEADER_BYTES = 16 * 1024


def headers_too_large() -> GatewayError:
    return GatewayError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"request header fields larger than {MAX_HEADER_BYTES} bytes (cookies included)",
        reason="HEADERS_TOO_LARGE",
        http_status=431,
    )


def header_bytes(headers: list[tuple[bytes, bytes]]) -> int:
    """Size of a header block as sent (`name: value\\r\\n` per field)."""
    return sum(len(name) + len(value) + 4 for name, value in headers)


class H11Protocol(_UvicornH11Protocol):
    """uvicorn's h11 protocol, answering 431 with the JSON error body when the header block outgrew
    the parser's buffer (uvicorn sends a plain-text 400 for every parse error)."""

    def send_400_response(self, msg: str) -> None:
        buffered, _closed = self.conn.trailing_data
        if len(buffered) <= MAX_HEADER_BYTES:
            super().send_400_response(msg)  # a malformed request: uvicorn's 400 stays
            return
        status, body = gateway_error_body(headers_too_large())
        payload = dumps(body)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=status, headers=headers, reason=b"Request Header Fields Too Large"),
            h11.Data(data=payload),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()
