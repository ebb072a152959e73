"""foundryctl: terminal client of the mesh.

    foundryctl login --token TOKEN | --token -     a token from the workbench (Account → CLI token)
    foundryctl login --name alice [--gateway URL]  dev sign-in by name (when the gateway allows it)
    foundryctl orgs list
    foundryctl orgs connect-local DIR [--id ID] [--name NAME]
    foundryctl repos list --org ORG
    foundryctl tasks list --org ORG [--all]
    foundryctl tasks create --org ORG --repo REPO PROMPT [--title T] [--branch B]
    foundryctl tasks archive TASK [--org ORG]
    foundryctl send TASK_OR_SESSION TEXT [--org ORG]
    foundryctl watch task TASK [--org ORG]  |  foundryctl watch org ORG
Global: -o text|json (json: one JSON object per result, or per stream event).

ORG is an organization id (`acme`) or name (`organizations/acme`); TASK an id with --org, or a full
name; REPO a repository id, full name (`owner/repo`, or the directory name of a local organization)
or resource name. Services are found at FOUNDRY_<SERVICE>_TARGET or FOUNDRY_BIND_HOST and
FOUNDRY_<SERVICE>_PORT (the defaults of `make run`).

Tokens: `login` stores a caller identity signed by the mesh in $XDG_CONFIG_HOME/foundry/token
(~/.config/foundry/token, mode 0600; $FOUNDRY_TOKEN, when set, is used instead). It is valid for
12 hours from when it was made, whatever happens to the browser session it came from: signing out
of the workbench does NOT revoke it. Delete the token file to sign the CLI out; run `login` again
after 12 hours.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import uuid
from collections.abc import Callable
from typing import Any

import grpc
from foundry.common.v1 import watch_pb2
from foundry.github_data.v1 import github_data_service_pb2 as gd_pb2
from foundry.github_data.v1 import github_data_service_pb2_grpc as gd_grpc
from foundry.organization.v1 import organization_service_pb2 as org_pb2
from foundry.organization.v1 import organization_service_pb2_grpc as org_grpc
from foundry.task.v1 import session_pb2, task_pb2
from foundry.task.v1 import task_service_pb2 as task_pb2s
from foundry.task.v1 import task_service_pb2_grpc as task_grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from cli.client import (
    CliError,
    Mesh,
    child_name,
    expire_time,
    load_token,
    org_name,
    read_token,
    request_token,
    save_token,
    token_claims,
)
from services.platform.settings import Settings
from services.platform.watch.follower import WatchStopped, follow


def _dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message)


class Out:
    def __init__(self, mode: str) -> None:
        self.json = mode == "json"

    def emit(self, value: Any, text: str) -> None:
        print(json.dumps(value) if self.json else text, flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="foundryctl",
        description="Foundry mesh command-line client (gRPC to the services).",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    sub = p.add_subparsers(dest="command", required=True)
    login = sub.add_parser(
        "login",
        help="store a token (valid 12 h; signing out of the workbench does not revoke it)",
        description="Store a caller token for later commands. It is valid for 12 hours from when it "
        "was made; signing out of the workbench does not revoke it (delete the token file instead).",
    )
    how = login.add_mutually_exclusive_group(required=True)
    how.add_argument(
        "--token",
        help="a token from the workbench (Account → CLI token), or `-` to read it from stdin; "
        "checked against the services before it is stored",
    )
    how.add_argument("--name", help="dev sign-in by name through the gateway (when it allows it)")
    login.add_argument("--gateway", default=None, help="gateway URL (default: FOUNDRY_GATEWAY__PUBLIC_URL)")
    orgs = sub.add_parser("orgs", help="organizations").add_subparsers(dest="action", required=True)
    orgs.add_parser("list", help="the organizations you may open")
    connect = orgs.add_parser("connect-local", help="connect a directory of git repositories")
    connect.add_argument("directory")
    connect.add_argument("--id", default="")
    connect.add_argument("--name", default="")
    repos = sub.add_parser("repos", help="repositories").add_subparsers(dest="action", required=True)
    rl = repos.add_parser("list", help="an organization's repositories")
    rl.add_argument("--org", required=True)
    tasks = sub.add_parser("tasks", help="tasks").add_subparsers(dest="action", required=True)
    tl = tasks.add_parser("list", help="an organization's tasks")
    tl.add_argument("--org", required=True)
    tl.add_argument("--all", action="store_true", help="include archived and killed tasks")
    tc = tasks.add_parser("create", help="create a task (returns at once; `watch task` follows it)")
    tc.add_argument("--org", required=True)
    tc.add_argument("--repo", required=True, help="repository id, full name or resource name")
    tc.add_argument("prompt")
    tc.add_argument("--title", default="")
    tc.add_argument("--branch", default="")
    ta = tasks.add_parser("archive", help="archive a task")
    ta.add_argument("task")
    ta.add_argument("--org")
    send = sub.add_parser("send", help="send a message to a task's (first open) session")
    send.add_argument("target")
    send.add_argument("text")
    send.add_argument("--org")
    watch = sub.add_parser("watch", help="print stream events as they arrive (Ctrl-C stops)")
    what = watch.add_subparsers(dest="what", required=True)
    wt = what.add_parser("task", help="a task's changes")
    wt.add_argument("task")
    wt.add_argument("--org")
    wo = what.add_parser("org", help="an organization's summary (tasks, repositories, PRs, sync)")
    wo.add_argument("org")
    return p


async def _run(args: argparse.Namespace, settings: Settings, out: Out) -> None:
    if args.command == "login" and args.token is not None:
        await _login_with_token(read_token(args.token, sys.stdin), settings, out)
        return
    if args.command == "login":
        answer = request_token(args.gateway or settings.gateway.public_url, args.name)
        path = save_token(answer["token"])
        out.emit(
            {
                "user": answer["user"],
                "login": answer["login"],
                "expireTime": answer["expireTime"],
                "tokenPath": str(path),
            },
            f"signed in as {answer['login']} until {answer['expireTime']} (token in {path})",
        )
        return
    mesh = Mesh(settings, load_token())
    try:
        org = org_grpc.OrganizationServiceStub(mesh.channel("organization"))
        tasks = task_grpc.TaskServiceStub(mesh.channel("task"))
        md = mesh.metadata
        timeout = settings.call_timeout_seconds * 3
        if args.command == "orgs" and args.action == "list":
            response = await org.ListOrganizations(
                org_pb2.ListOrganizationsRequest(page_size=1000), metadata=md(), timeout=timeout
            )
            for o in response.organizations:
                out.emit(_dict(o), f"{o.name}\t{o.display_name}")
        elif args.command == "orgs":
            connected = await org.ConnectLocalOrganization(
                org_pb2.ConnectLocalOrganizationRequest(
                    organization_id=args.id,
                    display_name=args.name,
                    root_path=args.directory,
                    request_id=str(uuid.uuid4()),
                ),
                metadata=md(),
                timeout=timeout,
            )
            out.emit(_dict(connected.organization), f"connected {connected.organization.name}")
        elif args.command == "repos":
            for r in await _repositories(mesh, args.org, timeout):
                out.emit(_dict(r), f"{r.name}\t{r.full_name}\t{r.default_branch}")
        elif args.command == "tasks" and args.action == "list":
            listed = await tasks.ListTasks(
                task_pb2s.ListTasksRequest(parent=org_name(args.org), show_ended=args.all, page_size=500),
                metadata=md(),
                timeout=timeout,
            )
            for t in listed.tasks:
                out.emit(_dict(t), f"{t.name}\t{task_pb2.TaskStatus.Name(t.status)}\t{t.branch}\t{t.title}")
        elif args.command == "tasks" and args.action == "create":
            task = task_pb2.Task(
                repository=await _repository_name(mesh, args.org, args.repo, timeout),
                prompt=args.prompt,
                title=args.title,
                branch=args.branch,
            )
            created = await tasks.CreateTask(
                task_pb2s.CreateTaskRequest(
                    parent=org_name(args.org), task=task, request_id=str(uuid.uuid4())
                ),
                metadata=md(),
                timeout=timeout,
            )
            out.emit(_dict(created.task), f"created {created.task.name} on branch {created.task.branch}")
        elif args.command == "tasks":
            archived = await tasks.ArchiveTask(
                task_pb2s.ArchiveTaskRequest(
                    name=child_name(args.org, "tasks", args.task), reason="foundryctl"
                ),
                metadata=md(),
                timeout=timeout,
            )
            out.emit(
                _dict(archived.task),
                f"archiving {archived.task.name} ({task_pb2.TaskStatus.Name(archived.task.status)})",
            )
        elif args.command == "send":
            session = await _session_of(tasks, md, child_name(args.org, "tasks", args.target), timeout)
            sent = await tasks.SendMessage(
                task_pb2s.SendMessageRequest(name=session, text=args.text, request_id=str(uuid.uuid4())),
                metadata=md(),
                timeout=timeout,
            )
            out.emit({"session": _dict(sent.session), "message": sent.message}, f"queued {sent.message}")
        elif args.command == "watch" and args.what == "task":
            name = child_name(args.org, "tasks", args.task)
            await _watch(
                lambda token: tasks.WatchTask(
                    task_pb2s.WatchTaskRequest(name=name, resume_token=token), metadata=md()
                ),
                out,
            )
        else:
            name = f"{org_name(args.org)}/summary"
            await _watch(
                lambda token: org.WatchOrganizationSummary(
                    org_pb2.WatchOrganizationSummaryRequest(name=name, resume_token=token), metadata=md()
                ),
                out,
            )
    finally:
        await mesh.close()


async def _login_with_token(token: str, settings: Settings, out: Out) -> None:
    """Check `token` with the services (GetUser users/me verifies its signature and expiry), then store it."""
    claims = token_claims(token)
    mesh = Mesh(settings, token)
    try:
        stub = org_grpc.OrganizationServiceStub(mesh.channel("organization"))
        try:
            response = await stub.GetUser(
                org_pb2.GetUserRequest(name="users/me"),
                metadata=mesh.metadata(),
                timeout=settings.call_timeout_seconds * 3,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.NOT_FOUND):
                raise CliError(
                    f"the services refused this token ({exc.details()}); it may have expired "
                    "(tokens last 12 hours) or come from another mesh: make a new one"
                ) from exc
            raise
    finally:
        await mesh.close()
    path = save_token(token)
    user, expire = response.user, expire_time(claims)
    out.emit(
        {"user": user.name, "login": user.login, "expireTime": expire, "tokenPath": str(path)},
        f"signed in as {user.login} until {expire} (token in {path})",
    )


async def _repositories(mesh: Mesh, org: str, deadline: float) -> list[Any]:
    stub = gd_grpc.GithubDataServiceStub(mesh.channel("github_data"))
    found: list[Any] = []
    token = ""
    while True:
        page = await stub.ListRepositories(
            gd_pb2.ListRepositoriesRequest(parent=org_name(org), page_size=1000, page_token=token),
            metadata=mesh.metadata(),
            timeout=deadline,
        )
        found.extend(page.repositories)
        token = page.next_page_token
        if not token:
            return found


async def _repository_name(mesh: Mesh, org: str, repo: str, deadline: float) -> str:
    """`--repo` as a resource name: a name or id passes through, a full name is looked up."""
    if repo.startswith("organizations/") or re.fullmatch(r"[0-9a-f]{16}", repo):
        return child_name(org, "repositories", repo)
    listed = await _repositories(mesh, org, deadline)
    matches = [r for r in listed if repo in (r.full_name, r.full_name.rsplit("/", 1)[-1])]
    if len(matches) != 1:
        known = ", ".join(sorted(r.full_name for r in listed)) or "none"
        what = "no" if not matches else "more than one"
        raise CliError(f"{what} repository of {org_name(org)} is called {repo!r} (known: {known})")
    return str(matches[0].name)


async def _session_of(
    tasks: task_grpc.TaskServiceStub, md: Callable[[], Any], target: str, deadline: float
) -> str:
    if "/sessions/" in target:
        return target
    response: task_pb2s.GetTaskResponse = await tasks.GetTask(  # type: ignore[misc]
        task_pb2s.GetTaskRequest(name=target), metadata=md(), timeout=deadline
    )
    for session in response.task.sessions:
        if session.status != session_pb2.SESSION_STATUS_CLOSED:
            return str(session.name)
    raise CliError(f"{target} has no open session yet")


async def _watch(open_call: Callable[[str], Any], out: Out) -> None:
    """Print every event; the follower resumes after rotate/draining/lagging ends and bootstraps
    again after RESET or an expired token."""
    try:
        async for event in follow(open_call):
            kind = watch_pb2.WatchEventKind.Name(event.kind).removeprefix("WATCH_EVENT_KIND_").lower()
            names = ", ".join(i.name for i in event.items)
            out.emit(_dict(event), f"{kind:<13} {names}".rstrip())
    except WatchStopped as stopped:
        if stopped.reason == watch_pb2.WATCH_END_REASON_UNAUTHORIZED:
            raise CliError("the stream ended: you are no longer allowed to watch this") from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "directory", None):
        args.directory = os.path.abspath(args.directory)  # the service resolves paths on its host
    out = Out(args.output)
    try:
        asyncio.run(_run(args, Settings(), out))
    except CliError as exc:
        print(f"foundryctl: {exc}", file=sys.stderr)
        return 1
    except grpc.aio.AioRpcError as exc:
        print(f"foundryctl: {exc.code().name}: {exc.details()}", file=sys.stderr)
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            print(
                "foundryctl: is the mesh running? (FOUNDRY_BIND_HOST / FOUNDRY_<SERVICE>_PORT)",
                file=sys.stderr,
            )
        return 1
    except OSError as exc:  # token file, stdin
        print(f"foundryctl: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
