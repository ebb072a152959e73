"""Outbound network of confined sandboxes: one HTTP proxy per sandbox on a unix socket, by policy.

A confined sandbox has no network of its own (bubblewrap's new network namespace holds only a
loopback). When the policy allows traffic, the sandbox's processes reach the world through this proxy
(`HTTPS_PROXY=http://127.0.0.1:3128`, forwarded inside to the socket bound in), which allows:

    none         nothing (no proxy is started at all)
    model_apis   `CONNECT host:port` / plain `http://host:port/...` to the allowlisted hosts only
                 (the model APIs of the configured agents; the default)
    open         any host whose every address is globally routable (never this machine, private,
                 shared or link-local networks), connected at the address that was checked;
                 allowlisted names are reached whatever they resolve to

A TLS client in a CONNECT tunnel must name (SNI) the host it CONNECTed to, else the tunnel is closed
before any of its bytes go up: a CDN serving an allowlisted name would otherwise reach every other site
it serves (domain fronting). Refused requests get `403` with a one-line reason and are logged
(`egress_refused`). Allowlist entries are `host` (port 443) or `host:port`; names are compared
case-insensitively, exactly (no wildcards).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import ipaddress
import shutil
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from services.platform.logging import get_logger

log = get_logger(__name__)
_HEADER_LIMIT = 64 * 1024


class EgressPolicy(enum.StrEnum):
    NONE = "none"
    MODEL_APIS = "model_apis"
    OPEN = "open"


def parse_allowlist(entries: Sequence[str]) -> set[tuple[str, int]]:
    """`host` / `host:port` entries → {(host, port)} (port 443 when absent)."""
    allowed: set[tuple[str, int]] = set()
    for entry in entries:
        host, _, port = entry.strip().lower().partition(":")
        allowed.add((host, int(port) if port.isdigit() else 443))
    return allowed


def _public_address(host: str, port: int) -> str | None:
    """The one address `host` is reached at, when every address it resolves to is public (None
    otherwise). The proxy connects to this very address, so a name cannot re-resolve (DNS
    rebinding) to this machine or a private network between the check and the connection."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses or not all(a.is_global and not _is_this_machine(a) for a in addresses):
        return None
    return str(addresses[0])


def _is_this_machine(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True when `address` is one of this machine's own (a public one, on a host that has one, where
    the mesh's ports may listen): the kernel lets a socket bind only to a local address. Fails closed
    where non-local binds are allowed (`net.ipv4.ip_nonlocal_bind`): every address then counts as ours."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((str(address), 0))
        except OSError:
            return False
    return True


class EgressProxies:
    """The proxies of this service's sandboxes (one asyncio unix server each).

    Args:
        policy: the default egress policy of this service's sandboxes (an organization may choose
            another for its own, see `ensure`).
        allowlist: hosts reachable under `model_apis` (and reachable even when private under `open`).
    """

    def __init__(self, policy: EgressPolicy, allowlist: Sequence[str]) -> None:
        self.policy = policy
        self._allowed = parse_allowlist(allowlist)
        # Sockets live in a short private directory: a unix socket path is limited to 107 bytes.
        self._dir = Path(tempfile.mkdtemp(prefix="foundry-egress-"))
        self._servers: dict[str, asyncio.AbstractServer] = {}
        self._policies: dict[str, EgressPolicy] = {}
        self._paths: dict[str, Path] = {}
        self._lock = asyncio.Lock()

    def socket(self, provider_id: str) -> Path | None:
        """The socket of the sandbox's running proxy (None under `none` or before `ensure`)."""
        return self._paths.get(provider_id)

    async def ensure(self, provider_id: str, policy: EgressPolicy) -> None:
        """Start the sandbox's proxy, enforcing `policy`, unless that is `none` or it already runs."""
        if policy is EgressPolicy.NONE or provider_id in self._servers:
            return
        async with self._lock:
            if provider_id in self._servers:
                return
            path = self._dir / f"{hashlib.sha256(provider_id.encode()).hexdigest()[:16]}.sock"
            await asyncio.to_thread(path.unlink, missing_ok=True)
            self._policies[provider_id] = policy
            server = await asyncio.start_unix_server(
                lambda r, w: self._serve(provider_id, r, w), path=str(path), limit=_HEADER_LIMIT
            )
            self._servers[provider_id], self._paths[provider_id] = server, path

    async def close(self, provider_id: str) -> None:
        server = self._servers.pop(provider_id, None)
        self._paths.pop(provider_id, None)
        self._policies.pop(provider_id, None)
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    async def close_all(self) -> None:
        for provider_id in list(self._servers):
            await self.close(provider_id)
        await asyncio.to_thread(shutil.rmtree, self._dir, True)

    async def route(self, host: str, port: int, policy: EgressPolicy) -> tuple[str | None, str]:
        """(address to connect to, or None when refused; why refused)."""
        key = (host.lower().strip("[]").rstrip("."), port)
        if policy is EgressPolicy.NONE:
            return None, "egress is off for this sandbox"
        if key in self._allowed:
            return key[0], ""
        if policy is EgressPolicy.MODEL_APIS:
            return None, f"{host}:{port} is not on this sandbox's egress allowlist"
        address = await asyncio.to_thread(_public_address, key[0], port)
        if address is None:
            return None, f"{host} is not a public address (this machine, a private network, or unresolvable)"
        return address, ""

    async def _serve(
        self, provider_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            writer.close()
            return
        request_line, _, rest = head.partition(b"\r\n")
        try:
            method, target, version = request_line.decode("latin-1").split(" ", 2)
        except ValueError:
            await _answer(writer, 400, "malformed request line")
            return
        if method.upper() == "CONNECT":
            host, _, port_text = target.rpartition(":")
            if not port_text.isdigit() or not host:
                await _answer(writer, 400, "CONNECT needs host:port")
                return
            port, forward = int(port_text), b""
        else:
            url = urlsplit(target)
            if url.scheme != "http" or not url.hostname:
                await _answer(writer, 400, "only CONNECT and absolute http:// requests go through this proxy")
                return
            try:
                host, port = url.hostname, url.port or 80
            except ValueError:
                await _answer(writer, 400, "bad port")
                return
            path = (url.path or "/") + (f"?{url.query}" if url.query else "")
            forward = f"{method} {path} {version}\r\n".encode("latin-1") + rest
        address, why = await self.route(host, port, self._policies.get(provider_id, EgressPolicy.NONE))
        if address is None:
            log.warning("egress_refused", sandbox=provider_id, host=host, port=port, reason=why)
            await _answer(writer, 403, why)
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(address, port), 15)
        except (OSError, TimeoutError) as exc:
            await _answer(writer, 502, f"cannot reach {host}:{port}: {exc}")
            return
        if forward:
            up_writer.write(forward)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True)
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        # Upstream may speak first (ssh, smtp); the client's bytes go up only once its TLS ClientHello,
        # if it sends one, names the host it was let through to.
        downstream = asyncio.ensure_future(_pipe(up_reader, writer))
        try:
            first, why = await _checked_first_bytes(reader, host)
        except (asyncio.IncompleteReadError, ConnectionError):
            first, why = b"", ""
        if why:
            log.warning("egress_refused", sandbox=provider_id, host=host, port=port, reason=why)
        if why or not first:
            up_writer.close()
            writer.close()
            downstream.cancel()
            return
        up_writer.write(first)
        await asyncio.gather(_pipe(reader, up_writer), downstream, return_exceptions=True)


async def _checked_first_bytes(reader: asyncio.StreamReader, host: str) -> tuple[bytes, str]:
    """The client's first bytes after CONNECT (its whole first TLS record when it starts TLS), and why
    they must not go on ('' when they may). A TLS client must name `host` (SNI): a CDN that serves an
    allowlisted name would otherwise reach any other site it serves (domain fronting)."""
    first = await reader.read(1)
    if first != b"\x16":  # not a TLS handshake (or nothing): the connection goes only to `host` anyway
        return first, ""
    header = first + await reader.readexactly(4)
    record = header + await reader.readexactly(int.from_bytes(header[3:5], "big"))
    try:
        name = server_name(record)
    except ValueError as exc:
        return record, f"unreadable TLS ClientHello for {host}: {exc}"
    wanted = host.lower().strip("[]").rstrip(".")
    if name is None:
        if _is_address(wanted):
            return record, ""
        return record, f"TLS to {host} must name it (no server name sent)"
    if name.lower().rstrip(".") != wanted:
        return record, f"TLS server name {name} is not {host}, the host this tunnel was allowed to"
    return record, ""


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def server_name(record: bytes) -> str | None:
    """The host name (SNI) a TLS ClientHello record asks for; None when it names none.

    Raises ValueError when `record` is not one whole ClientHello record."""
    if len(record) < 9 or record[0] != 0x16 or record[5] != 0x01:
        raise ValueError("not a ClientHello")
    hello_length = int.from_bytes(record[6:9], "big")
    hello = record[9:]
    if len(hello) < hello_length:
        raise ValueError("ClientHello spans several records")
    hello = hello[:hello_length]
    at = 2 + 32  # client version, random
    at += 1 + _byte_at(hello, at)  # session id
    at += 2 + int.from_bytes(_slice(hello, at, 2), "big")  # cipher suites
    at += 1 + _byte_at(hello, at)  # compression methods
    if at == len(hello):
        return None  # no extensions
    end = at + 2 + int.from_bytes(_slice(hello, at, 2), "big")
    at += 2
    while at + 4 <= end:
        kind, size = int.from_bytes(hello[at : at + 2], "big"), int.from_bytes(hello[at + 2 : at + 4], "big")
        data = _slice(hello, at + 4, size)
        if kind == 0:  # server_name: list length, then (type 0 = host_name, length, name)
            if len(data) < 5 or data[2] != 0:
                raise ValueError("malformed server_name extension")
            return _slice(data, 5, int.from_bytes(data[3:5], "big")).decode("ascii")
        at += 4 + size
    return None


def _byte_at(data: bytes, at: int) -> int:
    if at >= len(data):
        raise ValueError("truncated ClientHello")
    return data[at]


def _slice(data: bytes, at: int, size: int) -> bytes:
    if at + size > len(data):
        raise ValueError("truncated ClientHello")
    return data[at : at + size]


async def _answer(writer: asyncio.StreamWriter, status: int, reason: str) -> None:
    body = (reason + "\n").encode()
    phrase = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}[status]
    writer.write(
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(Exception):
        await writer.drain()
    writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            writer.close()
