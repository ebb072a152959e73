"""The HTTP edge end to end over loopback, in front of the real organization and github-data
services: JSON API through the route table, identity and request id propagation, deadlines, error
bodies, sessions, CSRF, CLI tokens, webhooks and GitHub OAuth."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import structlog
from foundry.organization.v1 import organization_service_pb2 as org_pb2
from foundry.organization.v1 import organization_service_pb2_grpc as org_grpc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from services.github_data.domain.models import WebhookDelivery
from services.github_data.store import queries as github_queries
from services.github_data.store import user_accounts as github_tokens
from services.platform.identity import verify
from services.platform.secrets import SecretBox
from services.platform.server.http import HttpServer
from services.platform.webhook_signature import sign as sign_webhook
from tests.helpers import assert_eventually, free_port
from tests.unit.gateway.harness import Harness, running, sse

ACME = "organizations/acme"


class TestJsonApi:
    async def test_call_carries_the_signed_in_user_and_the_request_id(self, tmp_path: Path) -> None:
        async with running(tmp_path) as h:
            alice = await h.signed_in("alice", member_of=[ACME])
            await h.signed_in("bob", member_of=["organizations/beta"])
            with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
                response = await alice.get(
                    "/v1/organizations?pageSize=5", headers={"x-request-id": "req-123"}
                )
            assert response.status_code == 200, response.text
            assert response.headers["x-request-id"] == "req-123"
            body = response.json()
            assert [o["name"] for o in body["organizations"]] == [ACME]  # alice's, not bob's
            assert body["nextPageToken"] == ""
            (served,) = [
                e for e in logs if e["event"] == "rpc" and e["method"].endswith("/ListOrganizations")
            ]
            assert (served["request_id"], served["caller"], served["code"]) == (
                "req-123",
                "user/local-alice",
                "OK",
            )

    async def test_deadline_header_passes_through_capped(self, tmp_path: Path) -> None:
        # A healthy service answers at once, so a deadline is only visible when the service stalls:
        # the proxy holds every byte, and the call must end when its deadline says.
        cap = 2.0
        async with running(
            tmp_path, proxy_organization=True, overrides={"gateway": {"deadline_cap_seconds": cap}}
        ) as h:
            assert h.proxy is not None
            alice = await h.signed_in("alice")
            assert (await alice.get("/v1/organizations")).status_code == 200  # session check now cached
            h.proxy.pause()
            try:
                started = time.monotonic()
                short = await alice.get("/v1/organizations", headers={"grpc-timeout": "500m"})
                short_seconds = time.monotonic() - started
                started = time.monotonic()
                capped = await alice.get("/v1/organizations", headers={"x-request-timeout": "3600"})
                capped_seconds = time.monotonic() - started
            finally:
                h.proxy.resume()
            assert (short.status_code, short.json()["status"]) == (504, "DEADLINE_EXCEEDED")
            assert 0.45 <= short_seconds < cap - 0.5
            assert (capped.status_code, capped.json()["status"]) == (504, "DEADLINE_EXCEEDED")
            assert cap - 0.05 <= capped_seconds < cap + 1.0

    async def test_upstream_error_becomes_http_status_with_error_info(self, tmp_path: Path) -> None:
        async with running(tmp_path) as h:
            alice = await h.signed_in("alice", member_of=[ACME])
            response = await alice.get(f"/v1/{ACME}/members/nobody")
            assert response.status_code == 404
            body = response.json()
            assert (body["code"], body["status"]) == (5, "NOT_FOUND")
            assert body["details"][0]["reason"] == "MEMBER_NOT_FOUND"
            assert body["details"][0]["domain"] == "foundry.organization"
            denied = await alice.get("/v1/organizations/secret")
            assert denied.status_code == 403 and denied.json()["details"][0]["reason"] == "NOT_A_MEMBER"

    async def test_service_that_is_down_is_503_and_unknown_routes_are_404(self, tmp_path: Path) -> None:
        async with running(tmp_path) as h:  # no task service runs
            alice = await h.signed_in("alice")
            down = await alice.get(f"/v1/{ACME}/tasks")
            assert (down.status_code, down.json()["status"]) == (503, "UNAVAILABLE")
            assert (await alice.get("/v1/no/such/route")).json()["details"][0]["reason"] == "NO_ROUTE"
            bad = await alice.post(f"/v1/{ACME}/tasks", content=b"{not json")
            assert bad.status_code == 400 and bad.json()["status"] == "INVALID_ARGUMENT"

    async def test_signed_out_browser_gets_401_but_public_route_answers(self, tmp_path: Path) -> None:
        async with running(tmp_path) as h:
            anonymous = await h.browser()
            assert (await anonymous.get("/v1/organizations")).status_code == 401
            shell = await anonymous.get("/v1/users/me/appSnapshot")  # public: the signed-out shell
            assert shell.status_code == 200, shell.text
            assert shell.json()["appSnapshot"]["authStatus"] == "AUTH_STATUS_SIGNED_OUT"
            forged = httpx.AsyncClient(base_url=h.url, cookies={"foundry_session": "forged.value.sig"})
            h.clients.append(forged)
            assert (await forged.get("/v1/organizations")).status_code == 401

    async def test_app_snapshot_is_the_callers_own_singleton(self, tmp_path: Path) -> None:
        async with running(tmp_path) as h:
            alice = await h.signed_in("alice")
            mine = await alice.get("/v1/users/me/appSnapshot")
            assert mine.status_code == 200, mine.text
            snapshot = mine.json()["appSnapshot"]
            assert snapshot["authStatus"] == "AUTH_STATUS_SIGNED_IN"
            assert snapshot["name"] == "users/local-alice/appSnapshot"
            by_id = await alice.get("/v1/users/local-alice/appSnapshot")
            assert by_id.json()["appSnapshot"]["authSession"] == snapshot["authSession"]
            other = await alice.get("/v1/users/local-bob/appSnapshot")
            assert (other.status_code, other.json()["status"]) == (403, "PERMISSION_DENIED")
            # The `app` topic is WatchApp of the same singleton (the gateway names the user).
            async with sse(alice, "/v1/stream?topic=app") as stream:
                items = (await stream.until("snapshot")).data["items"]
                assert {"users/local-alice", snapshot["authSession"]["name"]} <= {i["name"] for i in items}

    async def test_openapi_and_workbench_are_served(self, tmp_path: Path) -> None:
        async with running(tmp_path) as h:
            browser = await h.browser()
            doc = (await browser.get("/v1/openapi.json")).json()
            assert (
                doc["openapi"].startswith("3.") and "/v1/organizations/{organization}/tasks" in doc["paths"]
            )
            index = await browser.get("/")
            assert index.status_code == 200 and "/js/main.js" in index.text

    async def test_stream_is_not_cached_buffered_or_compressed(self, tmp_path: Path) -> None:
        async with running(tmp_path) as h:
            alice = await h.signed_in("alice")
            async with sse(alice, "/v1/stream", headers={"accept-encoding": "gzip, br"}) as stream:
                headers = stream.response.headers
                assert headers["content-type"].startswith("text/event-stream")
                assert headers["cache-control"] == "no-cache, no-transform"
                assert headers["x-accel-buffering"] == "no"
                assert "content-encoding" not in headers
                assert (await stream.next()).event == "hello"


class TestSessions:
    async def test_mutation_without_csrf_token_is_refused_before_any_upstream_call(
        self, tmp_path: Path
    ) -> None:
        async with running(tmp_path) as h:
            alice = await h.signed_in("alice")
            token = alice.headers.pop("x-csrf-token")
            response = await alice.post(
                "/v1/organizations:connectLocal",
                json={"organizationId": "acme", "rootPath": str(h.directory(ACME))},
            )
            assert (
                response.status_code == 403
                and response.json()["details"][0]["reason"] == "CSRF_TOKEN_MISMATCH"
            )
            alice.headers["x-csrf-token"] = token
            assert (await alice.get("/v1/organizations")).json()["organizations"] == []  # nothing connected

    async def test_cross_origin_mutation_is_refused_even_with_token(self, tmp_path: Path) -> None:
        async with running(tmp_path) as h:
            alice = await h.signed_in("alice")
            response = await alice.post("/v1/auth/signOut", headers={"origin": "https://evil.example"})
            assert (
                response.status_code == 403
                and response.json()["details"][0]["reason"] == "CSRF_ORIGIN_MISMATCH"
            )
            assert (await alice.get("/v1/auth/session")).json()["signedIn"] is True

    async def test_cookie_is_http_only_and_sign_out_revokes_it_and_ends_streams(self, tmp_path: Path) -> None:
        async with running(tmp_path) as h:
            alice = await h.browser()
            response = await alice.post("/v1/auth/dev/signIn", json={"login": "alice"})
            cookie = response.headers["set-cookie"]
            assert "foundry_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
            stolen = alice.cookies["foundry_session"]
            async with sse(alice, "/v1/stream") as stream:
                await stream.until("hello")
                assert (await alice.post("/v1/auth/signOut")).status_code == 200
                end = await stream.until("end")
                assert end.data["reason"] == "signed_out"
            replay = httpx.AsyncClient(base_url=h.url, cookies={"foundry_session": stolen})
            h.clients.append(replay)
            assert (await replay.get("/v1/organizations")).status_code == 401
            assert (await alice.get("/v1/auth/session")).json()["signedIn"] is False

    async def test_dev_sign_in_is_refused_unless_enabled(self, tmp_path: Path) -> None:
        async with running(tmp_path, overrides={"gateway": {"dev_sign_in": False}}) as h:
            browser = await h.browser()
            assert (await browser.get("/v1/auth/session")).json()["devSignIn"] is False
            refused = await browser.post("/v1/auth/dev/signIn", json={"login": "alice"})
            assert refused.status_code == 400, refused.text
            assert refused.json()["details"][0]["reason"] == "LOCAL_SIGN_IN_DISABLED"
            assert "foundry_session" not in browser.cookies
            cli = httpx.AsyncClient(base_url=h.url)  # no cookie: the CLI's token request
            h.clients.append(cli)
            assert (await cli.post("/v1/auth/token", json={"login": "alice"})).status_code == 400

    async def test_cli_token_is_a_caller_identity_the_services_accept(self, tmp_path: Path) -> None:
        async with running(tmp_path) as h:
            client = httpx.AsyncClient(base_url=h.url)
            h.clients.append(client)
            response = await client.post("/v1/auth/token", json={"login": "carol"})
            assert response.status_code == 200, response.text
            caller, _, signature = response.json()["token"].partition(".")
            identity = verify(caller, signature, h.settings.internal_auth_secret.get_secret_value())
            assert (identity.subject, identity.login) == ("user/local-carol", "carol")
            user = await org_grpc.OrganizationServiceStub(h.mesh.channel("organization", identity)).GetUser(
                org_pb2.GetUserRequest(name="users/me")
            )
            assert (user.user.name, user.user.login) == (response.json()["user"], "carol")


class TestWebhooks:
    async def test_bad_signature_is_401_and_records_nothing(self, tmp_path: Path) -> None:
        async with running(tmp_path, overrides={"github": {"webhook_secret": "s3cret"}}) as h:
            client = httpx.AsyncClient(base_url=h.url)
            h.clients.append(client)
            body = b'{"action":"opened"}'
            headers = {"x-github-delivery": "d1", "x-github-event": "pull_request"}
            missing = await client.post("/v1/webhooks/github", content=body, headers=headers)
            wrong = await client.post(
                "/v1/webhooks/github",
                content=body,
                headers={**headers, "x-hub-signature-256": sign_webhook("other", body)},
            )
            assert (missing.status_code, wrong.status_code) == (401, 401)
            assert await _delivery(h, "d1") is None
            signed = {**headers, "x-hub-signature-256": sign_webhook("s3cret", body)}
            good = await client.post("/v1/webhooks/github", content=body, headers=signed)
            assert good.status_code == 202 and good.json() == {"deliveryId": "d1", "duplicate": False}
            delivery = await _delivery(h, "d1")
            assert delivery is not None
            assert (delivery.event, delivery.action, delivery.payload) == ("pull_request", "opened", body)
            again = await client.post("/v1/webhooks/github", content=body, headers=signed)
            assert again.status_code == 202 and again.json()["duplicate"] is True


async def _delivery(h: Harness, delivery_id: str) -> WebhookDelivery | None:
    """The delivery as github-data stored it (None when it never reached the service)."""
    db = h.host("github_data").db
    assert db is not None
    async with db.snapshot() as session:
        return await github_queries.get_delivery(session, delivery_id=delivery_id)


@contextlib.asynccontextmanager
async def fake_github() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """A GitHub look-alike (GitHub itself is out of reach): the OAuth token endpoint, /user, and the
    empty /user/orgs and /user/repos that account discovery and the personal organization's sync read."""
    exchanges: list[dict[str, str]] = []

    async def token(request: Request) -> JSONResponse:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        exchanges.append(form)
        if form.get("code") != "good-code":
            return JSONResponse({"error": "bad_verification_code"})
        return JSONResponse({"access_token": "gho_abc", "scope": "read:org,repo", "token_type": "bearer"})

    async def user(request: Request) -> JSONResponse:
        if request.headers.get("authorization") not in ("Bearer gho_abc", "token gho_abc"):
            return JSONResponse({"message": "Bad credentials"}, status_code=401)
        return JSONResponse(
            {
                "id": 42,
                "login": "octo",
                "name": "Octo Cat",
                "email": "octo@example.com",
                "avatar_url": "https://avatars/octo",
                "type": "User",
            }
        )

    async def nothing(_: Request) -> JSONResponse:
        return JSONResponse([])

    server = HttpServer(
        Starlette(
            routes=[
                Route("/login/oauth/access_token", token, methods=["POST"]),
                Route("/api/user", user),
                Route("/api/user/orgs", nothing),
                Route("/api/user/repos", nothing),
            ]
        ),
        "127.0.0.1",
        free_port(),
        name="github",
    )
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.port}", exchanges
    finally:
        await server.stop()


class TestGithubOAuth:
    async def test_callback_exchanges_code_and_signs_in_with_github(self, tmp_path: Path) -> None:
        async with fake_github() as (github_url, exchanges):
            github = {
                "client_id": "cid",
                "client_secret": "csecret",
                "oauth_authorize_url": f"{github_url}/login/oauth/authorize",
                "oauth_token_url": f"{github_url}/login/oauth/access_token",
                "api_url": f"{github_url}/api",
            }
            async with running(tmp_path, overrides={"github": github}) as h:
                browser = await h.browser()
                start = await browser.get("/v1/auth/github/start?redirect=/%23/orgs")
                assert start.status_code == 302
                query = parse_qs(urlsplit(start.headers["location"]).query)
                assert query["scope"] == ["read:org repo"] and query["client_id"] == ["cid"]
                state = query["state"][0]
                stranger = httpx.AsyncClient(base_url=h.url)  # same state, another browser: refused
                h.clients.append(stranger)
                refused = await stranger.get(f"/v1/auth/github/callback?code=good-code&state={state}")
                assert refused.status_code == 401 and exchanges == []
                done = await browser.get(f"/v1/auth/github/callback?code=good-code&state={state}")
                assert done.status_code == 302 and done.headers["location"] == "/#/orgs"
                assert exchanges[0]["code"] == "good-code" and exchanges[0]["client_secret"] == "csecret"
                session = (await browser.get("/v1/auth/session")).json()
                assert session["signedIn"] and session["login"] == "octo"
                me = (await browser.get("/v1/users/me")).json()["user"]
                assert (me["name"], me["githubAccountId"], me["displayName"]) == (
                    "users/42",
                    "42",
                    "Octo Cat",
                )
                # The token went to github-data (SetGithubToken), the owner of GitHub tokens, which
                # stored it for octo and queued the discovery of octo's accounts.
                db = h.host("github_data").db
                assert db is not None
                async with db.snapshot() as session:
                    box = SecretBox(h.settings.credentials_key.get_secret_value())
                    stored = await github_tokens.get_token(session, box, user_id="42")
                assert stored is not None
                assert (stored.access_token, stored.scopes) == ("gho_abc", ("read:org", "repo"))

                async def discovered() -> None:
                    assert db is not None
                    async with db.snapshot() as session:
                        discovery = await github_tokens.get_discovery(session, user_id="42")
                    assert discovery is not None and discovery.state in ("pending", "running", "done")

                await assert_eventually(discovered)


def test_json_bodies_are_compact() -> None:
    from gateway.codec import dumps

    assert (
        dumps({"a": [1, "é"]})
        == json.dumps({"a": [1, "é"]}, separators=(",", ":"), ensure_ascii=False).encode()
    )
