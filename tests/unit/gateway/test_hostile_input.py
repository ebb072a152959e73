"""Hostile HTTP input at the gateway: every request gets the JSON error shape with the right 4xx,
never a 5xx or a plain-text page. Known cases first, then a property-based fuzz with a fixed budget
over every route of the table (hypothesis; bodies, query strings and path segments)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.api.table import ROUTES, Rpc
from tests.unit.gateway.harness import running

ACME = "organizations/acme"
CONNECT = "/v1/organizations:connectLocal"


def _json_error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body: dict[str, object] = response.json()
    assert {"code", "status", "message", "details"} <= body.keys(), body
    return body


async def test_known_hostile_inputs_get_precise_json_errors(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        alice = await h.signed_in("alice", member_of=[ACME])
        bad_utf8 = await alice.post(CONNECT, content=b'{"rootPath": "\xff\xfe"}')
        _json_error(bad_utf8, 400)
        deep = await alice.post(CONNECT, content=b'{"a":' * 100_000 + b"1" + b"}" * 100_000)
        _json_error(deep, 400)
        for value in ("nan", "inf", "-1", "soon"):
            timed = await alice.get("/v1/organizations", headers={"x-request-timeout": value})
            assert _json_error(timed, 400)["status"] == "INVALID_ARGUMENT", value
        huge = await alice.post(CONNECT, content=b'{"rootPath": "' + b"a" * (5 * 1024 * 1024) + b'"}')
        assert "BODY_TOO_LARGE" in json.dumps(_json_error(huge, 413))
        long_path = await alice.get(f"/v1/{ACME}/tasks/{'t' * 8192}")
        assert "URL_TOO_LONG" in json.dumps(_json_error(long_path, 414))
        not_object = await alice.post(CONNECT, content=b"[1, 2]")
        _json_error(not_object, 400)


_TEMPLATE_PART = re.compile(r"\{([^}=]+)(=([^}]*))?\}")


def _fill(template: str, segment: str) -> str:
    """A concrete path for a route template, every `*` of its bindings replaced by `segment`."""

    def replace(match: re.Match[str]) -> str:
        pattern = match.group(3) or "*"
        return pattern.replace("**", segment).replace("*", segment)

    return _TEMPLATE_PART.sub(replace, template)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


async def test_fuzzed_requests_on_every_route_never_get_a_5xx(tmp_path: Path) -> None:
    # Every service runs, so every route reaches its real handler (a route to a service that is not
    # running only tests the gateway's 503).
    async with running(tmp_path, services=("organization", "github_data", "sandbox", "task")) as h:
        alice = await h.signed_in("alice", member_of=[ACME])
        cookies, headers = dict(alice.cookies), dict(alice.headers)
        routes = [r for r in ROUTES if r.http_method in ("GET", "POST", "PATCH", "DELETE")]
        failures: list[str] = []

        @settings(
            max_examples=200,
            deadline=None,
            derandomize=True,  # the same budget and cases in every run
            suppress_health_check=list(HealthCheck),
        )
        @given(
            route=st.sampled_from(routes),
            segment=st.text(
                alphabet=st.characters(codec="utf-8", exclude_characters="/?#"), min_size=1, max_size=40
            ),
            body=st.one_of(
                json_values.map(lambda v: json.dumps(v).encode()),
                st.binary(max_size=200),
                st.dictionaries(st.text(max_size=12), json_values, max_size=5).map(
                    lambda d: json.dumps(d).encode()
                ),
            ),
            query=st.dictionaries(
                st.sampled_from(["pageSize", "pageToken", "filter", "view", "readMask", "x"]),
                st.text(max_size=20),
                max_size=3,
            ),
        )
        def check(route: Rpc, segment: str, body: bytes, query: dict[str, str]) -> None:
            path = _fill(route.template, quote(segment, safe=""))
            response = client.request(route.http_method, path, params=query, content=body)
            if response.status_code >= 500 and response.status_code != 503:
                failures.append(
                    f"{route.http_method} {path!r} -> {response.status_code} {response.text[:200]}"
                )
            if response.status_code >= 400:
                assert response.headers.get("content-type", "").startswith("application/json"), (
                    path,
                    response.status_code,
                    response.text[:200],
                )

        # One client for every case (a new client per case costs an SSL context and a connection).
        with httpx.Client(base_url=h.url, cookies=cookies, headers=headers, timeout=15) as client:
            await asyncio.to_thread(check)
        assert not failures, "\n".join(failures[:10])
