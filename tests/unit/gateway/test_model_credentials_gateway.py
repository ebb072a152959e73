"""Model API keys through the JSON API and foundryctl: the owner sets one (the CLI reads it from
stdin), members see only which variables are set, a member and a stranger are refused (403) and
change nothing, an unknown variable is 400, clearing works; the key is in no response."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.unit.gateway.harness import running
from tests.unit.gateway.test_cli import fails, make_git_repositories, ok, ok_json

ORG = "organizations/acme"


async def test_keys_through_the_json_api(tmp_path: Path) -> None:
    secret = "sk-ant-" + uuid.uuid4().hex
    async with running(tmp_path) as h:
        owner = await h.signed_in("alice", member_of=[ORG])
        member = await h.signed_in("bob", member_of=[ORG])
        stranger = await h.signed_in("mallory")
        bodies: list[str] = []

        created = await owner.post(
            f"/v1/{ORG}/modelCredentials", json={"variable": "ANTHROPIC_API_KEY", "value": secret}
        )
        assert created.status_code == 200, created.text
        bodies.append(created.text)
        assert created.json()["modelCredential"]["name"] == f"{ORG}/modelCredentials/ANTHROPIC_API_KEY"
        for client, status in ((member, 403), (stranger, 403)):
            refused = await client.post(
                f"/v1/{ORG}/modelCredentials", json={"variable": "ANTHROPIC_API_KEY", "value": "x"}
            )
            assert refused.status_code == status, refused.text
            gone = await client.delete(f"/v1/{ORG}/modelCredentials/ANTHROPIC_API_KEY")
            assert gone.status_code == status, gone.text
        unknown = await owner.post(f"/v1/{ORG}/modelCredentials", json={"variable": "PATH", "value": "/x"})
        assert unknown.status_code == 400, unknown.text
        listed = await member.get(f"/v1/{ORG}/modelCredentials")
        bodies.append(listed.text)
        assert [c["variable"] for c in listed.json()["modelCredentials"]] == ["ANTHROPIC_API_KEY"]
        assert (await stranger.get(f"/v1/{ORG}/modelCredentials")).status_code == 403
        bodies.append((await owner.get(f"/v1/{ORG}")).text)
        bodies.append((await owner.get(f"/v1/{ORG}/auditEvents")).text)
        cleared = await owner.delete(f"/v1/{ORG}/modelCredentials/ANTHROPIC_API_KEY")
        assert cleared.status_code == 200, cleared.text
        assert (await owner.get(f"/v1/{ORG}/modelCredentials")).json().get("modelCredentials", []) == []
        assert all(secret not in body for body in bodies)


async def test_keys_from_the_command_line(tmp_path: Path) -> None:
    secret = "sk-ant-" + uuid.uuid4().hex
    home = tmp_path / "home"
    src = make_git_repositories(tmp_path / "src", "demo")
    async with running(tmp_path) as h:
        await ok(h, home, "login", "--name", "alice", "--gateway", h.url)
        await ok(h, home, "orgs", "connect-local", str(src), "--id", "acme")
        out = await ok(h, home, "orgs", "keys", "acme", "set", "ANTHROPIC_API_KEY", stdin=secret + "\n")
        assert out.strip() == "organizations/acme: ANTHROPIC_API_KEY is set", out
        listed = await ok(h, home, "orgs", "keys", "acme")
        assert listed.startswith("ANTHROPIC_API_KEY\tset ") and secret not in listed, listed
        (entry,) = await ok_json(h, home, "orgs", "keys", "acme", "list")
        assert entry["variable"] == "ANTHROPIC_API_KEY" and secret not in str(entry)
        err = await fails(h, home, "orgs", "keys", "acme", "set", "PATH", stdin="x\n")
        assert "PATH" in err
        out = await ok(h, home, "orgs", "keys", "acme", "clear", "ANTHROPIC_API_KEY")
        assert out.strip() == "organizations/acme: ANTHROPIC_API_KEY is cleared", out
        assert "has no model API keys" in await ok(h, home, "orgs", "keys", "acme")
