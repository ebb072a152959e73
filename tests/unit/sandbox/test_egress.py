"""The egress proxy's decisions (`EgressProxies.route`), including names that resolve to this machine,
shared address space and DNS rebinding (the proxy connects to the address it checked)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from services.sandbox.providers.egress import EgressPolicy, EgressProxies, server_name
from tests.helpers.eventually import assert_eventually

OPEN, MODEL, NONE = EgressPolicy.OPEN, EgressPolicy.MODEL_APIS, EgressPolicy.NONE


@pytest.fixture
def proxies() -> EgressProxies:
    return EgressProxies(EgressPolicy.MODEL_APIS, ["api.anthropic.com", "127.0.0.1:8123"])


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "LOCALHOST",
        "localhost.",
        "::1",
        "[::1]",
        "0.0.0.0",
        "10.1.2.3",
        "100.64.0.1",
        "169.254.169.254",
        "192.168.1.1",
        "2130706433",
        "fd00::1",
    ],
)
async def test_open_never_reaches_this_machine_or_private_networks(proxies: EgressProxies, host: str) -> None:
    address, why = await proxies.route(host, 443, OPEN)
    assert address is None and "not a public address" in why


async def test_open_connects_to_the_address_it_checked(
    proxies: EgressProxies, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = iter(["93.184.216.34", "127.0.0.1"])  # a rebinding name: public first, then loopback

    def resolve(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    address, _ = await proxies.route("rebind.example", 443, OPEN)
    assert address == "93.184.216.34"  # the proxy dials this, never the name again


async def test_model_apis_allows_only_the_allowlist_and_none_allows_nothing(proxies: EgressProxies) -> None:
    assert (await proxies.route("API.Anthropic.com", 443, MODEL))[0] == "api.anthropic.com"
    assert (await proxies.route("127.0.0.1", 8123, MODEL))[0] == "127.0.0.1"  # allowlisted explicitly
    assert (await proxies.route("api.anthropic.com", 8443, MODEL))[0] is None  # port not listed
    assert (await proxies.route("example.com", 443, MODEL))[0] is None
    assert (await proxies.route("api.anthropic.com", 443, NONE))[0] is None


_OWN_PUBLIC_ADDRESS = """
import asyncio, sys
from services.sandbox.providers.egress import EgressPolicy, EgressProxies

async def main() -> None:
    proxies = EgressProxies(EgressPolicy.OPEN, [])
    for host in sys.argv[1:]:
        address, why = await proxies.route(host, 5432, EgressPolicy.OPEN)
        print(host, address, why)
    await proxies.close_all()

asyncio.run(main())
"""


def test_open_never_reaches_this_machines_own_public_addresses() -> None:
    """A host with a public address may serve the mesh's ports on it (FOUNDRY_BIND_HOST=0.0.0.0): `open`
    must refuse it like loopback. Run in a network namespace of its own where two public addresses are
    this machine's (on its loopback); a public address elsewhere stays routable."""
    own_v4, own_v6, elsewhere = "93.184.216.34", "2606:2800:220:1::1", "1.1.1.1"
    setup = f"ip link set lo up && ip addr add {own_v4}/32 dev lo && ip addr add {own_v6}/128 dev lo"
    namespace = ["unshare", "--user", "--map-root-user", "--net", "sh", "-c"]
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs util-linux unshare and iproute2 ip")
    probe = subprocess.run([*namespace, setup], capture_output=True, text=True, timeout=30, check=False)
    if probe.returncode != 0:
        pytest.skip(f"no network namespace of our own here: {probe.stderr.strip()}")
    done = subprocess.run(
        [
            *namespace,
            f'{setup} && exec "{sys.executable}" -c "$0" "$@"',
            _OWN_PUBLIC_ADDRESS,
            own_v4,
            own_v6,
            elsewhere,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=Path(__file__).resolve().parents[3],
    )
    lines = {line.split()[0]: line for line in done.stdout.splitlines()}
    assert done.returncode == 0 and len(lines) == 3, (done.stdout, done.stderr)
    for own in (own_v4, own_v6):
        assert f"{own} None" in lines[own] and "not a public address" in lines[own], lines
    assert lines[elsewhere].startswith(f"{elsewhere} {elsewhere} "), lines


def _client_hello(server_hostname: str | None) -> bytes:
    """The first TLS record a real client (Python's ssl) sends for `server_hostname`."""
    import ssl

    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.create_default_context()
    context.check_hostname = server_hostname is not None
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_server_name_reads_what_a_tls_client_asks_for() -> None:
    assert server_name(_client_hello("api.anthropic.com")) == "api.anthropic.com"
    assert server_name(_client_hello("127.0.0.1")) is None  # no SNI for an address
    hello = _client_hello("api.anthropic.com")
    for broken in (hello[:40], b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00"):
        with pytest.raises(ValueError):
            server_name(broken)


class _Upstream:
    """A TCP server standing in for an allowlisted API: records what reaches it, optionally speaks first."""

    def __init__(self, banner: bytes = b"") -> None:
        self.received = b""
        self.banner = banner
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> int:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(self.banner)
            while data := await reader.read(65536):
                self.received += data
            writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


async def _tunnel(proxies: EgressProxies, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    path = proxies.socket("s1")
    assert path is not None
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(f"CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode())
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    return reader, writer


async def test_fronted_tls_never_reaches_upstream_and_server_first_protocols_still_work() -> None:
    """Domain fronting: CONNECT to an allowlisted name, then TLS naming another site the same CDN serves.
    Nothing of it may reach upstream; TLS naming the allowed host goes through, and an upstream that
    speaks first (ssh) is heard before the client sends anything."""
    upstream = _Upstream(banner=b"SSH-2.0-upstream\r\n")
    async with upstream as port:
        proxies = EgressProxies(EgressPolicy.MODEL_APIS, [f"localhost:{port}"])
        await proxies.ensure("s1", MODEL)
        try:
            reader, writer = await _tunnel(proxies, port)
            assert await asyncio.wait_for(reader.readline(), 5) == b"SSH-2.0-upstream\r\n"  # before we speak
            writer.write(_client_hello("evil.example"))
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the proxy
            writer.close()
            assert upstream.received == b""
            reader, writer = await _tunnel(proxies, port)
            await asyncio.wait_for(reader.readline(), 5)
            hello = _client_hello("localhost")
            writer.write(hello)
            await writer.drain()

            async def arrived() -> None:
                assert upstream.received == hello

            await assert_eventually(arrived)
            writer.close()
        finally:
            await proxies.close_all()
