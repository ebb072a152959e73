"""The egress proxy's decisions (`EgressProxies.route`), including names that resolve to this machine,
shared address space and DNS rebinding (the proxy connects to the address it checked)."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from services.sandbox.providers.egress import EgressPolicy, EgressProxies

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
