"""A local HTTP server that speaks GitHub's REST wire format for the endpoints github_data uses.

Starlette app served by uvicorn on 127.0.0.1:<free port> inside the test's event loop. State lives in
`GithubState` (accounts, installations, repositories, pull requests, members, tokens); switches inject
failures (`fail`, `rate_limit`) and latency (`delay`). Every request is logged in `state.requests`
(and, with the `time.monotonic()` it arrived at, in `state.request_times`).

    state = GithubState(app_id="4242", public_key=pem)
    acme = state.add_account("acme", kind="Organization")
    state.install(77, "acme")
    state.add_repo("acme", "api"); state.add_pull("acme/api", 1, head="feat")
    async with GithubServer(state, prefix="/api/v3") as server:
        settings.github.api_url = server.url

Endpoints: POST /app/installations/{id}/access_tokens (RS256 app JWT verified against the public
key), GET /installation/repositories, GET /user, GET /user/orgs, GET /user/installations,
GET /user/repos, GET /orgs/{org}/members[?role=admin], GET|POST /repos/{owner}/{repo}/pulls. Lists
page with `per_page` (max 100) and `page`, answering RFC 8288 `Link` headers (next, last, first, prev).

Payload shapes follow GitHub's documentation: REST repositories carry the caller's `permissions`,
webhook ones do not (`webhook_repository_json`), the `push` webhook's repository has unix-time
`created_at`/`pushed_at` (`push_repository_json`); pull request lists answer "pull request simple"
items, `POST .../pulls` and the `pull_request` webhook the full object (`pull_request_json(shape=)`).

Git over HTTP, as github.com serves `https://github.com/{owner}/{repo}.git`: `serve_git(full_name,
bare_path)` publishes a bare repository at `{server.url}/{owner}/{repo}.git` through `git
http-backend` (smart HTTP, clone/fetch/push). Like GitHub it answers 401 with a Basic challenge
unless the password is an issued installation token or a known OAuth token; every git request is
logged in `state.git_requests` as (request line, credential kind or "anonymous").
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Self

import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from tests.helpers.loopback_server import LoopbackServer

WEB = "https://github.com"
DOCS = "https://docs.github.com/rest"


def app_key_pair() -> tuple[str, str]:
    """A fresh RSA key pair for a test GitHub App: (private PEM, public PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def user_json(
    login: str, uid: int, kind: str = "User", api: str = "https://api.github.com"
) -> dict[str, Any]:
    """A "simple user" object as GitHub embeds it (owner, sender, user, account)."""
    return {
        "login": login,
        "id": uid,
        "node_id": f"MDQ6VXNlcn{uid}",
        "avatar_url": f"https://avatars.githubusercontent.com/u/{uid}?v=4",
        "gravatar_id": "",
        "url": f"{api}/users/{login}",
        "html_url": f"{WEB}/{login}",
        "followers_url": f"{api}/users/{login}/followers",
        "following_url": f"{api}/users/{login}/following{{/other_user}}",
        "gists_url": f"{api}/users/{login}/gists{{/gist_id}}",
        "starred_url": f"{api}/users/{login}/starred{{/owner}}{{/repo}}",
        "subscriptions_url": f"{api}/users/{login}/subscriptions",
        "organizations_url": f"{api}/users/{login}/orgs",
        "repos_url": f"{api}/users/{login}/repos",
        "events_url": f"{api}/users/{login}/events{{/privacy}}",
        "received_events_url": f"{api}/users/{login}/received_events",
        "type": kind,
        "user_view_type": "public",
        "site_admin": False,
    }


def organization_json(login: str, oid: int, api: str = "https://api.github.com") -> dict[str, Any]:
    """An "organization simple" object: `GET /user/orgs` items and the webhook `organization`."""
    return {
        "login": login,
        "id": oid,
        "node_id": f"O_kgDO{oid:08d}",
        "url": f"{api}/orgs/{login}",
        "repos_url": f"{api}/orgs/{login}/repos",
        "events_url": f"{api}/orgs/{login}/events",
        "hooks_url": f"{api}/orgs/{login}/hooks",
        "issues_url": f"{api}/orgs/{login}/issues",
        "members_url": f"{api}/orgs/{login}/members{{/member}}",
        "public_members_url": f"{api}/orgs/{login}/public_members{{/member}}",
        "avatar_url": f"https://avatars.githubusercontent.com/u/{oid}?v=4",
        "description": None,
    }


# What a REST answer carries for the authenticated caller and a webhook never does.
REST_ONLY_REPOSITORY_FIELDS = ("permissions",)
# What `GET`/`POST /repos/{owner}/{repo}/pulls/{n}` and the `pull_request` webhook carry beyond a
# `GET /repos/{owner}/{repo}/pulls` list item ("pull request simple").
PULL_REQUEST_DETAIL_FIELDS = (
    "merged",
    "mergeable",
    "rebaseable",
    "mergeable_state",
    "merged_by",
    "comments",
    "review_comments",
    "maintainer_can_modify",
    "commits",
    "additions",
    "deletions",
    "changed_files",
)


def repository_json(
    owner: dict[str, Any],
    name: str,
    rid: int,
    *,
    private: bool = False,
    default_branch: str = "main",
    description: str | None = None,
    pushed_at: datetime | None = None,
    api: str = "https://api.github.com",
) -> dict[str, Any]:
    """A full repository object as REST answers carry it (`GET /installation/repositories`,
    `GET /user/repos`, a pull request's `head.repo`/`base.repo`): every documented `*_url`, and the
    caller's `permissions`. `webhook_repository_json` / `push_repository_json` give the webhook
    variants of the same repository."""
    full = f"{owner['login']}/{name}"
    created = datetime(2023, 1, 2, 3, 4, 5, tzinfo=UTC)
    pushed = pushed_at or datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)
    base = f"{api}/repos/{full}"
    return {
        "id": rid,
        "node_id": f"R_kgDO{rid:08d}",
        "name": name,
        "full_name": full,
        "private": private,
        "owner": owner,
        "html_url": f"{WEB}/{full}",
        "description": description,
        "fork": False,
        "url": base,
        "forks_url": f"{base}/forks",
        "keys_url": f"{base}/keys{{/key_id}}",
        "collaborators_url": f"{base}/collaborators{{/collaborator}}",
        "teams_url": f"{base}/teams",
        "hooks_url": f"{base}/hooks",
        "issue_events_url": f"{base}/issues/events{{/number}}",
        "events_url": f"{base}/events",
        "assignees_url": f"{base}/assignees{{/user}}",
        "branches_url": f"{base}/branches{{/branch}}",
        "tags_url": f"{base}/tags",
        "blobs_url": f"{base}/git/blobs{{/sha}}",
        "git_tags_url": f"{base}/git/tags{{/sha}}",
        "git_refs_url": f"{base}/git/refs{{/sha}}",
        "trees_url": f"{base}/git/trees{{/sha}}",
        "statuses_url": f"{base}/statuses/{{sha}}",
        "languages_url": f"{base}/languages",
        "stargazers_url": f"{base}/stargazers",
        "contributors_url": f"{base}/contributors",
        "subscribers_url": f"{base}/subscribers",
        "subscription_url": f"{base}/subscription",
        "commits_url": f"{base}/commits{{/sha}}",
        "git_commits_url": f"{base}/git/commits{{/sha}}",
        "comments_url": f"{base}/comments{{/number}}",
        "issue_comment_url": f"{base}/issues/comments{{/number}}",
        "contents_url": f"{base}/contents/{{+path}}",
        "compare_url": f"{base}/compare/{{base}}...{{head}}",
        "merges_url": f"{base}/merges",
        "archive_url": f"{base}/{{archive_format}}{{/ref}}",
        "downloads_url": f"{base}/downloads",
        "issues_url": f"{base}/issues{{/number}}",
        "pulls_url": f"{base}/pulls{{/number}}",
        "milestones_url": f"{base}/milestones{{/number}}",
        "notifications_url": f"{base}/notifications{{?since,all,participating}}",
        "labels_url": f"{base}/labels{{/name}}",
        "releases_url": f"{base}/releases{{/id}}",
        "deployments_url": f"{base}/deployments",
        "created_at": iso(created),
        "updated_at": iso(pushed),
        "pushed_at": iso(pushed),
        "git_url": f"git://github.com/{full}.git",
        "ssh_url": f"git@github.com:{full}.git",
        "clone_url": f"{WEB}/{full}.git",
        "svn_url": f"{WEB}/{full}",
        "homepage": None,
        "size": 1024,
        "stargazers_count": 3,
        "watchers_count": 3,
        "language": "Python",
        "has_issues": True,
        "has_projects": True,
        "has_downloads": True,
        "has_wiki": False,
        "has_pages": False,
        "has_discussions": False,
        "forks_count": 0,
        "mirror_url": None,
        "archived": False,
        "disabled": False,
        "open_issues_count": 1,
        "license": None,
        "allow_forking": True,
        "is_template": False,
        "web_commit_signoff_required": False,
        "topics": [],
        "visibility": "private" if private else "public",
        "forks": 0,
        "open_issues": 1,
        "watchers": 3,
        "default_branch": default_branch,
        "permissions": {"admin": False, "maintain": False, "push": True, "triage": True, "pull": True},
    }


def webhook_repository_json(repo: dict[str, Any]) -> dict[str, Any]:
    """The webhook `repository` (and a webhook pull request's `head.repo`/`base.repo`) for the REST
    repository `repo`: the same object without the caller's `permissions`."""
    return {k: v for k, v in repo.items() if k not in REST_ONLY_REPOSITORY_FIELDS}


def _unix(value: str) -> int:
    return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())


def push_repository_json(repo: dict[str, Any]) -> dict[str, Any]:
    """The `push` webhook's `repository` for the REST repository `repo`, in its legacy shape:
    `created_at`/`pushed_at` are unix seconds (`updated_at` stays ISO 8601), `url` is the web URL,
    the owner carries `name`/`email`, and `stargazers`, `master_branch` (plus `organization`, the
    owning organization's login) are added."""
    body = webhook_repository_json(repo)
    owner = repo["owner"]
    body["owner"] = {"name": owner["login"], "email": None, **owner}
    body["url"] = repo["html_url"]
    body["created_at"] = _unix(repo["created_at"])
    body["pushed_at"] = _unix(repo["pushed_at"])
    body["stargazers"] = repo["stargazers_count"]
    body["master_branch"] = repo["default_branch"]
    if owner.get("type") == "Organization":
        body["organization"] = owner["login"]
    return body


def pull_request_webhook(
    state: GithubState,
    login: str,
    full_name: str,
    number: int,
    action: str,
    *,
    head: str,
    installation_id: int,
    title: str = "",
    draft: bool = False,
    merged: bool = False,
    updated_at: datetime | None = None,
) -> bytes:
    """A complete `pull_request` webhook body as GitHub sends it for the organization `login`'s
    repository `full_name` (known to `state`): the webhook pull request (with `merged`, `mergeable`,
    `commits`, … and `head.repo`/`base.repo`) and repository, both without the REST-only
    `permissions`. A `closed` action closes the pull request (merged when `merged`)."""
    repository = state.repos[full_name]
    account = state.accounts[login]
    pull_request = pull_request_json(
        repository,
        number,
        title=title or f"Change {number}",
        head=head,
        base="main",
        author=account,
        draft=draft,
        state="closed" if action == "closed" else "open",
        merged=merged,
        updated_at=updated_at,
        api=state.api,
        shape="webhook",
    )
    body = {
        "action": action,
        "number": number,
        "pull_request": pull_request,
        "repository": webhook_repository_json(repository),
        "organization": organization_json(login, int(account["id"]), state.api),
        "sender": account,
        "installation": {"id": installation_id, "node_id": f"MDIz{installation_id}"},
    }
    return json.dumps(body).encode()


def pull_request_json(
    repo: dict[str, Any],
    number: int,
    *,
    title: str,
    head: str,
    base: str,
    author: dict[str, Any],
    draft: bool = False,
    state: str = "open",
    merged: bool = False,
    body: str | None = None,
    updated_at: datetime | None = None,
    api: str = "https://api.github.com",
    shape: Literal["simple", "full", "webhook"] = "simple",
) -> dict[str, Any]:
    """A pull request object of the REST repository `repo`, in one of GitHub's three shapes:

    simple   a `GET /repos/{owner}/{repo}/pulls` list item ("pull request simple")
    full     `GET`/`POST` of one pull request: simple + PULL_REQUEST_DETAIL_FIELDS
    webhook  the `pull_request` webhook's object: full, with `head.repo`/`base.repo` in the
             webhook repository shape (no `permissions`)
    """
    created = datetime(2024, 5, 1, 9, 0, 0, tzinfo=UTC)
    updated = updated_at or created
    full = repo["full_name"]
    url = f"{api}/repos/{full}/pulls/{number}"
    sha = uuid.uuid5(uuid.NAMESPACE_URL, f"{full}#{number}").hex + "00000000"
    merge_sha = uuid.uuid5(uuid.NAMESPACE_URL, f"{full}#{number}/merge").hex + "00000000"
    closed = iso(updated) if state == "closed" else None
    side_repo = webhook_repository_json(repo) if shape == "webhook" else repo
    html = f"{WEB}/{full}/pull/{number}"
    pr: dict[str, Any] = {
        "url": url,
        "id": 10_000 + number,
        "node_id": f"PR_kwDO{number:08d}",
        "html_url": html,
        "diff_url": f"{html}.diff",
        "patch_url": f"{html}.patch",
        "issue_url": f"{api}/repos/{full}/issues/{number}",
        "number": number,
        "state": state,
        "locked": False,
        "title": title,
        "user": author,
        "body": body,
        "created_at": iso(created),
        "updated_at": iso(updated),
        "closed_at": closed,
        "merged_at": closed if merged else None,
        "merge_commit_sha": merge_sha if merged else None,
        "assignee": None,
        "assignees": [],
        "requested_reviewers": [],
        "requested_teams": [],
        "labels": [],
        "milestone": None,
        "draft": draft,
        "commits_url": f"{url}/commits",
        "review_comments_url": f"{url}/comments",
        "review_comment_url": f"{api}/repos/{full}/pulls/comments{{/number}}",
        "comments_url": f"{api}/repos/{full}/issues/{number}/comments",
        "statuses_url": f"{api}/repos/{full}/statuses/{sha[:40]}",
        "head": {
            "label": f"{repo['owner']['login']}:{head}",
            "ref": head,
            "sha": sha[:40],
            "user": repo["owner"],
            "repo": side_repo,
        },
        "base": {
            "label": f"{repo['owner']['login']}:{base}",
            "ref": base,
            "sha": sha[8:48],
            "user": repo["owner"],
            "repo": side_repo,
        },
        "_links": {
            "self": {"href": url},
            "html": {"href": html},
            "issue": {"href": f"{api}/repos/{full}/issues/{number}"},
            "comments": {"href": f"{api}/repos/{full}/issues/{number}/comments"},
            "review_comments": {"href": f"{url}/comments"},
            "review_comment": {"href": f"{api}/repos/{full}/pulls/comments{{/number}}"},
            "commits": {"href": f"{url}/commits"},
            "statuses": {"href": f"{api}/repos/{full}/statuses/{sha[:40]}"},
        },
        "author_association": "MEMBER",
        "auto_merge": None,
        "active_lock_reason": None,
    }
    if shape != "simple":
        pr |= pull_request_details(pr, merged_by=author if merged else None)
    return pr


def pull_request_details(pr: dict[str, Any], *, merged_by: dict[str, Any] | None = None) -> dict[str, Any]:
    """PULL_REQUEST_DETAIL_FIELDS for the pull request `pr` (GitHub computes mergeability in the
    background: a fresh pull request says `mergeable: null`, `mergeable_state: "unknown"`)."""
    return {
        "merged": pr["merged_at"] is not None,
        "mergeable": None,
        "rebaseable": None,
        "mergeable_state": "unknown",
        "merged_by": merged_by,
        "comments": 0,
        "review_comments": 0,
        "maintainer_can_modify": False,
        "commits": 3,
        "additions": 120,
        "deletions": 8,
        "changed_files": 4,
    }


def installation_json(
    installation_id: int, account: dict[str, Any], app_id: str, api: str = "https://api.github.com"
) -> dict[str, Any]:
    """An installation object as `GET /user/installations` lists it."""
    created = datetime(2024, 1, 15, 10, 0, 0, tzinfo=UTC)
    return {
        "id": installation_id,
        "client_id": "Iv1.8a61f9b3a7aba766",
        "account": account,
        "repository_selection": "all",
        "access_tokens_url": f"{api}/app/installations/{installation_id}/access_tokens",
        "repositories_url": f"{api}/installation/repositories",
        "html_url": f"{WEB}/settings/installations/{installation_id}",
        "app_id": int(app_id) if app_id.isdigit() else app_id,
        "app_slug": "foundry-test",
        "target_id": account["id"],
        "target_type": account["type"],
        "permissions": {"contents": "write", "members": "read", "metadata": "read", "pull_requests": "write"},
        "events": ["installation", "pull_request", "push", "repository"],
        "created_at": iso(created),
        "updated_at": iso(created),
        "single_file_name": None,
        "has_multiple_single_files": False,
        "single_file_paths": [],
        "suspended_by": None,
        "suspended_at": None,
    }


@dataclass
class Fault:
    """Answer `status` (with `headers`, `body`) to the next `times` requests whose path contains `path`."""

    status: int
    times: int
    path: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)


@dataclass
class GithubState:
    """Everything the fake GitHub knows. Mutate it between (or during) requests."""

    app_id: str = "4242"
    public_key: str = ""
    api: str = "https://api.github.com"  # set by GithubServer to its own URL (for Link headers and urls)
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    installations: dict[int, str] = field(default_factory=dict)
    repos: dict[str, dict[str, Any]] = field(default_factory=dict)
    pulls: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    members: dict[str, list[tuple[dict[str, Any], bool]]] = field(default_factory=dict)
    oauth_tokens: dict[str, str] = field(default_factory=dict)  # token -> user login
    names: dict[str, str] = field(default_factory=dict)  # user login -> profile name (GET /user)
    installation_tokens: dict[str, int] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    delay: dict[str, float] = field(default_factory=dict)  # path fragment -> seconds
    gates: dict[str, asyncio.Event] = field(default_factory=dict)  # path fragment -> hold until set
    requests: list[str] = field(default_factory=list)
    request_times: list[tuple[float, str]] = field(default_factory=list)  # (time.monotonic(), line)
    git_repos: dict[str, Path] = field(default_factory=dict)  # full name -> bare repository served
    git_requests: list[tuple[str, str]] = field(default_factory=list)
    rate_remaining: int = 5000
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1001))

    def add_account(self, login: str, kind: str = "Organization") -> dict[str, Any]:
        self.accounts[login] = user_json(login, next(self._ids), kind)
        return self.accounts[login]

    def install(self, installation_id: int, login: str) -> None:
        self.installations[installation_id] = login

    def add_repo(self, owner: str, name: str, **kwargs: Any) -> dict[str, Any]:
        repo = repository_json(self.accounts[owner], name, next(self._ids), **kwargs)
        self.repos[repo["full_name"]] = repo
        self.pulls.setdefault(repo["full_name"], [])
        return repo

    def add_pull(
        self,
        full_name: str,
        number: int,
        *,
        head: str,
        title: str = "",
        base: str = "main",
        author: str = "octocat",
        **kwargs: Any,
    ) -> dict[str, Any]:
        author_json = self.accounts.get(author) or user_json(author, 583231)
        pr = pull_request_json(
            self.repos[full_name],
            number,
            title=title or f"Change {number}",
            head=head,
            base=base,
            author=author_json,
            **kwargs,
        )
        self.pulls[full_name] = [p for p in self.pulls[full_name] if p["number"] != number] + [pr]
        return pr

    def add_member(self, org: str, login: str, *, admin: bool = False) -> dict[str, Any]:
        user = self.accounts.get(login) or self.add_account(login, "User")
        self.members.setdefault(org, []).append((user, admin))
        return user

    def fail(
        self, status: int = 503, *, times: int = 1, path: str = "", retry_after: int | None = None
    ) -> None:
        """Answer the next `times` matching requests with a server error (with `Retry-After` when given)."""
        headers = {} if retry_after is None else {"retry-after": str(retry_after)}
        self.faults.append(
            Fault(status, times, path, headers, {"message": "Server Error", "documentation_url": DOCS})
        )

    def rate_limit(
        self, *, times: int = 1, path: str = "", retry_after: int = 0, secondary: bool = False
    ) -> None:
        """Primary (403, `x-ratelimit-remaining: 0`) or secondary (429, `retry-after`) rate limit answers."""
        reset = str(int(time.time()) + retry_after)
        if secondary:
            headers = {"retry-after": str(retry_after)}
            body = {"message": "You have exceeded a secondary rate limit.", "documentation_url": DOCS}
            self.faults.append(Fault(429, times, path, headers, body))
        else:
            headers = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": reset}
            body = {"message": "API rate limit exceeded for installation ID 77.", "documentation_url": DOCS}
            self.faults.append(Fault(403, times, path, headers, body))

    def hold(self, fragment: str) -> asyncio.Event:
        """Matching requests hang until the returned event is set (a GitHub that stopped answering)."""
        self.gates[fragment] = asyncio.Event()
        return self.gates[fragment]

    def serve_git(self, full_name: str, bare: Path) -> str:
        """Serve the bare repository `bare` over smart HTTP as `full_name`; returns its clone URL
        (the server's root URL, not the API prefix, + `/{owner}/{repo}.git`)."""
        self.git_repos[full_name] = bare
        root = self.api.split("://", 1)[-1].split("/", 1)[0]
        return f"http://{root}/{full_name}.git"

    def count(self, fragment: str) -> int:
        """How many logged requests contain `fragment` (`"GET /repos/"` …)."""
        return sum(fragment in line for line in self.requests)

    def gaps(self, fragment: str) -> list[float]:
        """Seconds between consecutive logged requests containing `fragment` (how long a client
        waited before each retry)."""
        times = [t for t, line in self.request_times if fragment in line]
        return [b - a for a, b in itertools.pairwise(times)]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"message": message, "documentation_url": DOCS, "status": str(status)}, status, headers
    )


class _Api:
    """Route handlers over one GithubState."""

    def __init__(self, state: GithubState) -> None:
        self.s = state

    def headers(self) -> dict[str, str]:
        self.s.rate_remaining = max(0, self.s.rate_remaining - 1)
        return {
            "x-ratelimit-limit": "5000",
            "x-ratelimit-remaining": str(self.s.rate_remaining),
            "x-ratelimit-reset": str(int(time.time()) + 3600),
            "x-ratelimit-used": str(5000 - self.s.rate_remaining),
            "x-ratelimit-resource": "core",
            "x-github-media-type": "github.v3; format=json",
            "x-github-request-id": uuid.uuid4().hex[:20].upper(),
            "x-github-api-version-selected": "2022-11-28",
        }

    async def before(self, request: Request) -> Response | None:
        """Log, delay, and answer an injected fault when one matches."""
        line = f"{request.method} {request.url.path}?{request.url.query}"
        self.s.requests.append(line)
        self.s.request_times.append((time.monotonic(), line))
        for fragment, seconds in list(self.s.delay.items()):
            if fragment in line:
                await asyncio.sleep(seconds)
        for fragment, gate in list(self.s.gates.items()):
            if fragment in line:
                await gate.wait()
        for fault in self.s.faults:
            if fault.times > 0 and fault.path in line:
                fault.times -= 1
                return JSONResponse(
                    fault.body or {"message": "error"}, fault.status, {**self.headers(), **fault.headers}
                )
        return None

    def caller(self, request: Request) -> tuple[str, str] | None:
        """('installation', id) or ('user', login) for a valid `Authorization: token|Bearer <t>`."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() not in ("token", "bearer"):
            return None
        if token in self.s.installation_tokens:
            return "installation", str(self.s.installation_tokens[token])
        if token in self.s.oauth_tokens:
            return "user", self.s.oauth_tokens[token]
        return None

    def page(self, request: Request, items: list[dict[str, Any]], wrap: str | None = None) -> JSONResponse:
        per_page = min(int(request.query_params.get("per_page", 30)), 100)
        page = max(int(request.query_params.get("page", 1)), 1)
        last = max(1, math.ceil(len(items) / per_page))
        chunk = items[(page - 1) * per_page : page * per_page]
        links = []
        base = f"{self.s.api}{request.url.path.removeprefix(self._prefix(request))}"
        params = {k: v for k, v in request.query_params.items() if k not in ("page", "per_page")}

        def href(n: int) -> str:
            query = "&".join([*(f"{k}={v}" for k, v in params.items()), f"per_page={per_page}", f"page={n}"])
            return f"{base}?{query}"

        if page < last:
            links += [f'<{href(page + 1)}>; rel="next"', f'<{href(last)}>; rel="last"']
        if page > 1:
            links += [f'<{href(1)}>; rel="first"', f'<{href(page - 1)}>; rel="prev"']
        headers = self.headers()
        if links:
            headers["link"] = ", ".join(links)
        body: Any = chunk
        if wrap == "repositories":
            body = {"total_count": len(items), "repository_selection": "selected", wrap: chunk}
        elif wrap:
            body = {"total_count": len(items), wrap: chunk}
        return JSONResponse(body, 200, headers)

    def _prefix(self, request: Request) -> str:
        return str(request.scope.get("root_path", ""))

    async def access_token(self, request: Request) -> Response:
        if (fault := await self.before(request)) is not None:
            return fault
        installation_id = int(request.path_params["installation_id"])
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        try:
            claims = jwt.decode(
                token, self.s.public_key, algorithms=["RS256"], options={"require": ["iss", "exp", "iat"]}
            )
        except jwt.PyJWTError as exc:
            return _error(401, f"A JSON web token could not be decoded ({exc})")
        if scheme != "Bearer" or str(claims["iss"]) != self.s.app_id:
            return _error(401, "'Issuer' claim ('iss') must be an Integer")
        if installation_id not in self.s.installations:
            return _error(404, "Not Found")
        issued = f"ghs_{uuid.uuid4().hex}"
        self.s.installation_tokens[issued] = installation_id
        expires = datetime.now(UTC) + timedelta(hours=1)
        return JSONResponse(
            {
                "token": issued,
                "expires_at": iso(expires),
                "permissions": {
                    "contents": "write",
                    "members": "read",
                    "metadata": "read",
                    "pull_requests": "write",
                },
                "repository_selection": "all",
            },
            201,
            self.headers(),
        )

    async def installation_repositories(self, request: Request) -> Response:
        if (fault := await self.before(request)) is not None:
            return fault
        who = self.caller(request)
        if who is None or who[0] != "installation":
            return _error(401, "Bad credentials")
        owner = self.s.installations[int(who[1])]
        repos = sorted(
            (r for r in self.s.repos.values() if r["owner"]["login"] == owner), key=lambda r: r["id"]
        )
        return self.page(request, repos, wrap="repositories")

    async def user(self, request: Request) -> Response:
        if (fault := await self.before(request)) is not None:
            return fault
        who = self.caller(request)
        if who is None or who[0] != "user":
            return _error(401, "Bad credentials")
        account = self.s.accounts[who[1]]
        profile = {"name": self.s.names.get(who[1]), "email": None, "company": None, "bio": None}
        return JSONResponse({**account, **profile}, 200, self.headers())

    async def user_installations(self, request: Request) -> Response:
        """The App's installations on the user's own account and on organizations they belong to."""
        if (fault := await self.before(request)) is not None:
            return fault
        who = self.caller(request)
        if who is None or who[0] != "user":
            return _error(401, "Bad credentials")
        visible = {who[1], *self._orgs_of(who[1])}
        items = [
            installation_json(iid, self.s.accounts[login], self.s.app_id, self.s.api)
            for iid, login in sorted(self.s.installations.items())
            if login in visible
        ]
        return self.page(request, items, wrap="installations")

    def _orgs_of(self, login: str) -> list[str]:
        return [
            org for org, members in self.s.members.items() if any(u["login"] == login for u, _ in members)
        ]

    async def user_orgs(self, request: Request) -> Response:
        if (fault := await self.before(request)) is not None:
            return fault
        who = self.caller(request)
        if who is None or who[0] != "user":
            return _error(401, "Bad credentials")
        orgs = [
            organization_json(o, int(self.s.accounts[o]["id"]), self.s.api) for o in self._orgs_of(who[1])
        ]
        return self.page(request, orgs)

    async def user_repos(self, request: Request) -> Response:
        if (fault := await self.before(request)) is not None:
            return fault
        who = self.caller(request)
        if who is None or who[0] != "user":
            return _error(401, "Bad credentials")
        owners = {who[1], *self._orgs_of(who[1])}
        repos = sorted(
            (r for r in self.s.repos.values() if r["owner"]["login"] in owners), key=lambda r: r["full_name"]
        )
        return self.page(request, repos)

    async def org_members(self, request: Request) -> Response:
        if (fault := await self.before(request)) is not None:
            return fault
        if self.caller(request) is None:
            return _error(401, "Bad credentials")
        org = request.path_params["org"]
        if org not in self.s.accounts:
            return _error(404, "Not Found")
        only_admins = request.query_params.get("role") == "admin"
        users = [u for u, admin in self.s.members.get(org, []) if admin or not only_admins]
        return self.page(request, users)

    async def pulls(self, request: Request) -> Response:
        if (fault := await self.before(request)) is not None:
            return fault
        if self.caller(request) is None:
            return _error(401, "Bad credentials")
        full = f"{request.path_params['owner']}/{request.path_params['repo']}"
        if full not in self.s.repos:
            return _error(404, "Not Found")
        if request.method == "POST":
            return await self._create_pull(request, full)
        state = request.query_params.get("state", "open")
        items = [p for p in self.s.pulls[full] if state == "all" or p["state"] == state]
        if request.query_params.get("sort") == "updated":
            items.sort(
                key=lambda p: p["updated_at"], reverse=request.query_params.get("direction", "desc") == "desc"
            )
        return self.page(request, items)

    async def _create_pull(self, request: Request, full: str) -> Response:
        data = await request.json()
        owner = full.split("/")[0]
        if any(p["state"] == "open" and p["head"]["ref"] == data["head"] for p in self.s.pulls[full]):
            return JSONResponse(
                {
                    "message": "Validation Failed",
                    "errors": [
                        {
                            "resource": "PullRequest",
                            "code": "custom",
                            "message": f"A pull request already exists for {owner}:{data['head']}.",
                        }
                    ],
                    "documentation_url": DOCS,
                    "status": "422",
                },
                422,
                self.headers(),
            )
        number = max((p["number"] for p in self.s.pulls[full]), default=0) + 1
        pr = self.s.add_pull(
            full,
            number,
            head=data["head"],
            base=data["base"],
            title=data["title"],
            body=data.get("body"),
            draft=bool(data.get("draft")),
            updated_at=datetime.now(UTC),
        )
        return JSONResponse(pr | pull_request_details(pr), 201, self.headers())  # the full object

    def git_credential(self, request: Request) -> str | None:
        """ "installation" or "user" for Basic credentials whose password is a valid token."""
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            _, _, password = base64.b64decode(encoded).decode().partition(":")
        except ValueError:
            return None
        if password in self.s.installation_tokens:
            return "installation"
        if password in self.s.oauth_tokens:
            return "user"
        return None

    async def git(self, request: Request) -> Response:
        """Smart HTTP through `git http-backend` (CGI), behind GitHub-like Basic authentication."""
        full = f"{request.path_params['owner']}/{request.path_params['repo']}"
        line = f"{request.method} {request.url.path}?{request.url.query}"
        kind = self.git_credential(request)
        self.s.git_requests.append((line, kind or "anonymous"))
        bare = self.s.git_repos.get(full)
        if bare is None:
            return Response("Repository not found.\n", 404)
        if kind is None:
            return Response("", 401, {"www-authenticate": 'Basic realm="GitHub"'})
        body = await request.body()
        env = {
            "PATH": "/usr/bin:/bin:/usr/local/bin",
            "GIT_PROJECT_ROOT": str(bare.parent),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": f"/{bare.name}/{request.path_params['rest']}",
            "REQUEST_METHOD": request.method,
            "QUERY_STRING": request.url.query,
            "CONTENT_TYPE": request.headers.get("content-type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": "x-access-token",  # authenticated: http-backend then allows receive-pack
            "REMOTE_ADDR": "127.0.0.1",
            "GIT_PROTOCOL": request.headers.get("git-protocol", ""),
            "HTTP_CONTENT_ENCODING": request.headers.get("content-encoding", ""),
        }
        proc = await asyncio.create_subprocess_exec(
            "git",
            "http-backend",
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate(body)
        head, _, payload = out.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = out.partition(b"\n\n")
        status, headers = 200, {}
        for raw in head.decode(errors="replace").splitlines():
            key, _, value = raw.partition(":")
            if key.lower() == "status":
                status = int(value.strip().split()[0])
            elif key:
                headers[key.strip()] = value.strip()
        return Response(payload, status, headers)

    def routes(self) -> list[Route]:
        return [
            Route(
                "/app/installations/{installation_id:int}/access_tokens", self.access_token, methods=["POST"]
            ),
            Route("/installation/repositories", self.installation_repositories),
            Route("/user", self.user),
            Route("/user/orgs", self.user_orgs),
            Route("/user/installations", self.user_installations),
            Route("/user/repos", self.user_repos),
            Route("/orgs/{org}/members", self.org_members),
            Route("/repos/{owner}/{repo}/pulls", self.pulls, methods=["GET", "POST"]),
        ]

    def git_routes(self) -> list[Route]:
        return [Route("/{owner}/{repo}.git/{rest:path}", self.git, methods=["GET", "POST"])]


class GithubServer(LoopbackServer):
    """`async with GithubServer(state, prefix="/api/v3") as server:` → `server.url` is the API base URL."""

    def __init__(self, state: GithubState, *, prefix: str = "") -> None:
        self.state = state
        self.prefix = prefix
        api = _Api(state)
        routes: list[Any] = [Mount(prefix, routes=api.routes())] if prefix else api.routes()
        routes += api.git_routes()  # github.com serves git at the root, not under the API prefix
        super().__init__(Starlette(routes=routes), suffix=prefix)

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        self.state.api = self.url
        return self
