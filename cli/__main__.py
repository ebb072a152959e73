"""foundryctl: terminal client of the mesh.

    foundryctl login --token TOKEN | --token -     a token from the workbench (Account → CLI token)
    foundryctl login --name alice [--gateway URL]  dev sign-in by name (when the gateway allows it)
    foundryctl orgs list
    foundryctl orgs connect-local DIR [--id ID] [--name NAME]
    foundryctl orgs permissions ORG allow|ask|reject  how agents' permission requests are answered
    foundryctl orgs keys ORG [list | set VARIABLE | clear VARIABLE]
                                                       the organization's model API keys (admins set
                                                       them; `set` reads the key from stdin)
    foundryctl repos list --org ORG
    foundryctl tasks list --org ORG [--all]
    foundryctl tasks create --org ORG --repo REPO PROMPT [--title T] [--branch B] [--agent A] [--model M]
    foundryctl tasks archive TASK [--org ORG]
    foundryctl send TASK_OR_SESSION TEXT [--org ORG]
    foundryctl logs TASK_OR_SESSION [--org ORG] [-f]   what was said: the session's transcript
    foundryctl stop TASK_OR_SESSION [--org ORG]        stop the running turn
    foundryctl answer TASK_OR_SESSION REQUEST allow-once|allow-always|reject [--org ORG]
                                                       answer the agent's permission request
    foundryctl model TASK_OR_SESSION MODEL [--org ORG] change the session's model
    foundryctl agents list                             agents, whether they can run here, their models
    foundryctl push TASK [--org ORG] [--wait]          commit and push the task's branch
    foundryctl publish-pr TASK [--org ORG] [--title T] [--body B] [--draft] [--wait]
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
from foundry.organization.v1 import organization_pb2
from foundry.organization.v1 import organization_service_pb2 as org_pb2
from foundry.organization.v1 import organization_service_pb2_grpc as org_grpc
from foundry.sandbox.v1 import agent_session_pb2, session_event_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as sb_pb2
from foundry.sandbox.v1 import sandbox_service_pb2_grpc as sb_grpc
from foundry.task.v1 import session_pb2, task_pb2
from foundry.task.v1 import task_service_pb2 as task_pb2s
from foundry.task.v1 import task_service_pb2_grpc as task_grpc
from google.protobuf import field_mask_pb2, json_format
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
from cli.render import ChangePrinter, TranscriptPrinter, readable, task_status
from services.platform.settings import Settings
from services.platform.watch.follower import WatchStopped, follow

POLICIES = {
    "allow": organization_pb2.PERMISSION_POLICY_ALLOW,
    "ask": organization_pb2.PERMISSION_POLICY_ASK,
    "reject": organization_pb2.PERMISSION_POLICY_REJECT,
}
OUTCOMES = {
    "allow-once": agent_session_pb2.PERMISSION_OUTCOME_ALLOW_ONCE,
    "allow-always": agent_session_pb2.PERMISSION_OUTCOME_ALLOW_ALWAYS,
    "reject": agent_session_pb2.PERMISSION_OUTCOME_REJECT,
}


def _dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message)


async def _org_keys(
    org: org_grpc.OrganizationServiceAsyncStub,
    args: argparse.Namespace,
    out: Out,
    metadata: Any,
    timeout: float,
) -> None:
    """`orgs keys`: list, set (the key from stdin, never from argv) or clear a model API key."""
    parent = org_name(args.org)
    if args.key_action != "list" and not args.variable:
        raise SystemExit(f"foundryctl orgs keys: {args.key_action} needs a VARIABLE (e.g. ANTHROPIC_API_KEY)")
    if args.key_action == "set":
        value = sys.stdin.readline().strip()
        if not value:
            raise SystemExit("foundryctl orgs keys: no key on stdin")
        set_ = await org.SetModelCredential(
            org_pb2.SetModelCredentialRequest(parent=parent, variable=args.variable, value=value),
            metadata=metadata,
            timeout=timeout,
        )
        out.emit(_dict(set_.model_credential), f"{parent}: {args.variable} is set")
    elif args.key_action == "clear":
        await org.DeleteModelCredential(
            org_pb2.DeleteModelCredentialRequest(name=f"{parent}/modelCredentials/{args.variable}"),
            metadata=metadata,
            timeout=timeout,
        )
        out.emit({"cleared": args.variable}, f"{parent}: {args.variable} is cleared")
    else:
        listed = await org.ListModelCredentials(
            org_pb2.ListModelCredentialsRequest(parent=parent), metadata=metadata, timeout=timeout
        )
        for c in listed.model_credentials:
            out.emit(
                _dict(c),
                f"{c.variable}\tset {c.update_time.ToDatetime():%Y-%m-%d %H:%M} UTC\t{c.update_user or '-'}",
            )
        if not listed.model_credentials:
            out.note(f"{parent} has no model API keys; agents use the sandbox service's own, if any.")


class Out:
    def __init__(self, mode: str) -> None:
        self.json = mode == "json"

    def emit(self, value: Any, text: str) -> None:
        print(json.dumps(value) if self.json else text, flush=True)

    def note(self, text: str) -> None:
        """A sentence for people (an empty result, what to do next); nothing in JSON mode."""
        if not self.json:
            print(text, flush=True)


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
    policy = orgs.add_parser(
        "permissions",
        help="how the organization's agents' permission requests are answered (admins)",
        description="allow: inside the sandbox, without asking (the default); ask: the request waits "
        "in the session's transcript until a member answers it (`foundryctl answer`, or the "
        "workbench); reject: refuse them all. Applies to open sessions from their next message.",
    )
    policy.add_argument("org", metavar="ORG")
    policy.add_argument("policy", choices=list(POLICIES))
    keys = orgs.add_parser(
        "keys",
        help="the organization's model API keys for its agents (admins set and clear them)",
        description="list: which variables are set (never their values); set VARIABLE: read the key "
        "from stdin (one line) and store it, e.g. `foundryctl orgs keys acme set ANTHROPIC_API_KEY "
        "< key.txt`; clear VARIABLE: remove it. Agents started afterwards get it in that variable.",
    )
    keys.add_argument("org", metavar="ORG")
    keys.add_argument("key_action", nargs="?", default="list", choices=["list", "set", "clear"])
    keys.add_argument("variable", nargs="?", default="", metavar="VARIABLE")
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
    tc.add_argument(
        "--agent", default="", help="the first session's agent (claude, codex, …); default: the configured"
    )
    tc.add_argument("--model", default="", help="the first session's model; default: the agent's")
    ta = tasks.add_parser("archive", help="archive a task")
    ta.add_argument("task")
    ta.add_argument("--org")
    send = sub.add_parser("send", help="send a message to a task's (first open) session")
    send.add_argument("target")
    send.add_argument("text")
    send.add_argument("--org")
    logs = sub.add_parser(
        "logs",
        help="what was said in a task's first session (or the session named): the transcript",
        description="Print a session's transcript as a conversation: your messages, the agent's "
        "answers, its tool calls with their exit codes, permission answers and turn ends. TASK is "
        "a task (its first session) or a session's full name. -o json prints one SessionEvent per line.",
    )
    logs.add_argument("target", metavar="TASK_OR_SESSION")
    logs.add_argument("--org")
    logs.add_argument(
        "-f", "--follow", action="store_true", help="keep printing as the agent works (Ctrl-C stops)"
    )
    stop = sub.add_parser("stop", help="stop the running turn of a task's session (the queue behind it too)")
    stop.add_argument("target", metavar="TASK_OR_SESSION")
    stop.add_argument("--org")
    answer = sub.add_parser(
        "answer",
        help="answer a permission request of a task's session (`logs` shows them with their ids)",
    )
    answer.add_argument("target", metavar="TASK_OR_SESSION")
    answer.add_argument("request", metavar="REQUEST", help="the request id (`logs` prints it) or full name")
    answer.add_argument("outcome", choices=list(OUTCOMES))
    answer.add_argument("--org")
    model = sub.add_parser("model", help="change the model of a task's session (from its next turn)")
    model.add_argument("target", metavar="TASK_OR_SESSION")
    model.add_argument("model", metavar="MODEL")
    model.add_argument("--org")
    agents = sub.add_parser("agents", help="agents").add_subparsers(dest="action", required=True)
    agents.add_parser("list", help="the agents of this mesh, whether they can run here, and their models")
    push = sub.add_parser(
        "push", help="commit the task's changes and push its branch (queued; --wait follows it)"
    )
    push.add_argument("task")
    push.add_argument("--org")
    push.add_argument("--wait", action="store_true", help="wait until pushed (or failed) and say so")
    pr = sub.add_parser(
        "publish-pr", help="push the task's branch and open a pull request (GitHub organizations)"
    )
    pr.add_argument("task")
    pr.add_argument("--org")
    pr.add_argument("--title", default="", help="default: the task's title")
    pr.add_argument("--body", default="", help="default: the task's prompt")
    pr.add_argument("--draft", action="store_true")
    pr.add_argument("--wait", action="store_true", help="wait until opened (or failed) and say so")
    watch = sub.add_parser(
        "watch",
        help="print what changes as it happens (Ctrl-C stops)",
        description="Print the current state, then one line per change saying what changed "
        "(status, title, stage, sessions, …). -o json prints every stream event instead.",
    )
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
            if not response.organizations:
                out.note(
                    "No organizations. Connect one with `foundryctl orgs connect-local DIR` (a directory "
                    "of git repositories), or sign in to the workbench with GitHub."
                )
        elif args.command == "orgs" and args.action == "keys":
            await _org_keys(org, args, out, md(), timeout)
        elif args.command == "orgs" and args.action == "permissions":
            updated = await org.UpdateOrganization(
                org_pb2.UpdateOrganizationRequest(
                    organization=organization_pb2.Organization(
                        name=org_name(args.org), permission_policy=POLICIES[args.policy]
                    ),
                    update_mask=field_mask_pb2.FieldMask(paths=["permission_policy"]),
                ),
                metadata=md(),
                timeout=timeout,
            )
            out.emit(
                _dict(updated.organization),
                f"{updated.organization.name}: agents' permission requests are now answered: {args.policy}",
            )
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
            repositories = await _repositories(mesh, args.org, timeout)
            for r in repositories:
                out.emit(_dict(r), f"{r.name}\t{r.full_name}\t{r.default_branch}")
            if not repositories:
                out.note(f"No repositories in {org_name(args.org)} yet (its first sync may be running).")
        elif args.command == "tasks" and args.action == "list":
            listed = await tasks.ListTasks(
                task_pb2s.ListTasksRequest(parent=org_name(args.org), show_ended=args.all, page_size=500),
                metadata=md(),
                timeout=timeout,
            )
            for t in listed.tasks:
                status = task_status(task_pb2.TaskStatus.Name(t.status))
                out.emit(_dict(t), f"{t.name}\t{status}\t{t.branch}\t{t.title}")
            if not listed.tasks:
                ended = "" if args.all else " (archived and killed ones are left out; --all shows them)"
                out.note(
                    f"No tasks in {org_name(args.org)}{ended}. Create one with "
                    f"`foundryctl tasks create --org {args.org} --repo REPO PROMPT`."
                )
        elif args.command == "tasks" and args.action == "create":
            task = task_pb2.Task(
                repository=await _repository_name(mesh, args.org, args.repo, timeout),
                prompt=args.prompt,
                title=args.title,
                branch=args.branch,
            )
            agent = args.agent and f"agents/{args.agent.removeprefix('agents/')}"
            created = await tasks.CreateTask(
                task_pb2s.CreateTaskRequest(
                    parent=org_name(args.org),
                    task=task,
                    agent=agent,
                    model=args.model,
                    request_id=str(uuid.uuid4()),
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
            status = task_status(task_pb2.TaskStatus.Name(archived.task.status))
            out.emit(_dict(archived.task), f"archiving {archived.task.name} ({status})")
        elif args.command == "send":
            session = await _session_of(tasks, md, child_name(args.org, "tasks", args.target), timeout)
            sent = await tasks.SendMessage(
                task_pb2s.SendMessageRequest(name=session, text=args.text, request_id=str(uuid.uuid4())),
                metadata=md(),
                timeout=timeout,
            )
            out.emit({"session": _dict(sent.session), "message": sent.message}, f"queued {sent.message}")
        elif args.command == "stop":
            target = child_name(args.org, "tasks", args.target)
            session = await _session_of(tasks, md, target, timeout, running=True)
            stopped = await tasks.StopSession(
                task_pb2s.StopSessionRequest(name=session), metadata=md(), timeout=timeout
            )
            out.emit(_dict(stopped.session), f"stopping the running turn of {stopped.session.name}")
        elif args.command == "answer":
            target = child_name(args.org, "tasks", args.target)
            name = args.request
            if "/permissionRequests/" not in name:
                name = f"{await _session_of(tasks, md, target, timeout)}/permissionRequests/{name}"
            answered = await tasks.AnswerPermissionRequest(
                task_pb2s.AnswerPermissionRequestRequest(name=name, outcome=OUTCOMES[args.outcome]),
                metadata=md(),
                timeout=timeout,
            )
            request = answered.permission_request
            late = "" if request.delivered else " (its agent had stopped; an allow was sent as a message)"
            out.emit(
                {
                    "permissionRequest": _dict(request),
                    "session": _dict(answered.session),
                    "message": answered.message,
                },
                f"answered {args.outcome}: {request.title}{late}",
            )
        elif args.command == "model":
            target = child_name(args.org, "tasks", args.target)
            session = await _session_of(tasks, md, target, timeout)
            changed = await tasks.ChangeModel(
                task_pb2s.ChangeModelRequest(name=session, model=args.model), metadata=md(), timeout=timeout
            )
            out.emit(
                _dict(changed.session),
                f"{changed.session.name} uses {changed.session.model} from its next turn",
            )
        elif args.command == "agents":
            sandbox = sb_grpc.SandboxServiceStub(mesh.channel("sandbox"))
            agent_list = await sandbox.ListAgents(
                sb_pb2.ListAgentsRequest(page_size=1000), metadata=md(), timeout=timeout
            )
            for a in agent_list.agents:
                models = ", ".join(m.id for m in a.models) or "any"
                state = "available" if a.available else f"unavailable: {a.unavailable_reason}"
                default = " (default)" if a.default else ""
                out.emit(_dict(a), f"{a.name}{default}\t{a.display_name}\t{state}\tmodels: {models}")
        elif args.command in ("push", "publish-pr"):
            await _publish(tasks, md, child_name(args.org, "tasks", args.task), args, out, timeout)
        elif args.command == "logs":
            await _logs(mesh, tasks, child_name(args.org, "tasks", args.target), args.follow, out, timeout)
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
    tasks: task_grpc.TaskServiceStub,
    md: Callable[[], Any],
    target: str,
    deadline: float,
    *,
    running: bool = False,
) -> str:
    """The session `target` names, or the task's first open one (with `running`: the first one
    working on a turn, else the first open one)."""
    if "/sessions/" in target:
        return target
    response: task_pb2s.GetTaskResponse = await tasks.GetTask(  # type: ignore[misc]
        task_pb2s.GetTaskRequest(name=target), metadata=md(), timeout=deadline
    )
    open_ = [s for s in response.task.sessions if s.status != session_pb2.SESSION_STATUS_CLOSED]
    busy = [s for s in open_ if s.status == session_pb2.SESSION_STATUS_RUNNING]
    if running and not busy:
        raise CliError(f"{target} has no running turn to stop")
    for session in busy if running else open_:
        return str(session.name)
    raise CliError(f"{target} has no open session yet")


async def _publish(
    tasks: task_grpc.TaskServiceStub,
    md: Callable[[], Any],
    name: str,
    args: argparse.Namespace,
    out: Out,
    deadline: float,
) -> None:
    """`push` / `publish-pr`: record the request (the task service does the work in the background);
    with --wait, follow the task until its publication with this request id ends."""
    request_id = str(uuid.uuid4())
    if args.command == "push":
        pushed: task_pb2s.PushTaskResponse = await tasks.PushTask(  # type: ignore[misc]
            task_pb2s.PushTaskRequest(name=name, reason="foundryctl push", request_id=request_id),
            metadata=md(),
            timeout=deadline,
        )
        task, what = pushed.task, "pushing"
    else:
        try:
            published: task_pb2s.PublishPullRequestResponse = await tasks.PublishPullRequest(  # type: ignore[misc]
                task_pb2s.PublishPullRequestRequest(
                    name=name, title=args.title, body=args.body, draft=args.draft, request_id=request_id
                ),
                metadata=md(),
                timeout=deadline,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            raise CliError(
                f"FAILED_PRECONDITION: {exc.details()} (`foundryctl push {name}` pushes the branch)"
            ) from None
        task, what = published.task, "publishing a pull request for"
    if not args.wait:
        out.emit(_dict(task), f"{what} {task.name} (branch {task.branch}); `watch task` follows it")
        return

    def watch_task(token: str) -> Any:
        return tasks.WatchTask(task_pb2s.WatchTaskRequest(name=name, resume_token=token), metadata=md())

    ended = {task_pb2.PUBLICATION_STATE_PUBLISHED, task_pb2.PUBLICATION_STATE_ERROR}
    async for change in follow(watch_task):
        for item in change.items:
            current = task_pb2.Task()
            if not item.resource.Unpack(current):
                continue
            publication = current.publication
            if publication.request_id != request_id or publication.state not in ended:
                continue
            if publication.state == task_pb2.PUBLICATION_STATE_ERROR:
                raise CliError(f"{args.command} failed: {publication.error_message or 'no reason given'}")
            if args.command == "push":
                text = f"pushed {current.branch} at {publication.head_commit[:12]}"
            else:
                pr = current.pull_request
                text = f"opened pull request #{pr.number} {pr.url}".rstrip()
            out.emit(_dict(current), text)
            return
    raise CliError(f"the stream of {name} ended before the {args.command} finished")


async def _logs(
    mesh: Mesh, tasks: task_grpc.TaskServiceStub, target: str, live: bool, out: Out, deadline: float
) -> None:
    """Print a session's transcript: the whole log (ListSessionEvents, page by page), or with `live`
    the log and then every new event (WatchSessionEvents, resumed across stream ends)."""
    parent = await _transcript_of(tasks, mesh.metadata, target, live, deadline)
    stub = sb_grpc.SandboxServiceStub(mesh.channel("sandbox"))

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    printer = TranscriptPrinter(write)
    shown = 0

    def show(event: session_event_pb2.SessionEvent) -> None:
        nonlocal shown
        shown += 1
        if out.json:
            out.emit(_dict(event), "")
        else:
            printer.event(_dict(event))

    try:
        if not live:
            token = ""
            while True:
                page = await stub.ListSessionEvents(
                    sb_pb2.ListSessionEventsRequest(parent=parent, page_size=1000, page_token=token),
                    metadata=mesh.metadata(),
                    timeout=deadline,
                )
                for event in page.session_events:
                    show(event)
                token = page.next_page_token
                if not token:
                    break
            if not shown:
                out.note("Nothing was said yet.")
            return

        def watch_events(token: str) -> Any:
            request = sb_pb2.WatchSessionEventsRequest(parent=parent, resume_token=token)
            return stub.WatchSessionEvents(request, metadata=mesh.metadata())

        async for change in follow(watch_events):
            events = []
            for item in change.items:
                event = session_event_pb2.SessionEvent()
                if item.resource.Unpack(event):
                    events.append(event)
            for event in sorted(events, key=lambda e: e.seq):
                show(event)
    except WatchStopped as stopped:
        if stopped.reason == watch_pb2.WATCH_END_REASON_UNAUTHORIZED:
            raise CliError("the stream ended: you are no longer allowed to read this session") from None
        raise CliError(f"the stream ended: {stopped}") from None
    finally:
        printer.close()


async def _transcript_of(
    tasks: task_grpc.TaskServiceStub, md: Callable[[], Any], target: str, live: bool, deadline: float
) -> str:
    """The sandbox session (`organizations/…/sandboxes/…/sessions/…`) holding the transcript of
    `target`: a task's first session, a task session, or a sandbox session itself. With `live`, a
    session that has not started yet is waited for (WatchSession), not refused."""
    if "/sandboxes/" in target:
        return target
    session_name = target
    if "/sessions/" not in target:
        got: task_pb2s.GetTaskResponse = await tasks.GetTask(  # type: ignore[misc]
            task_pb2s.GetTaskRequest(name=target), metadata=md(), timeout=deadline
        )
        if not got.task.sessions:
            raise CliError(f"{target} has no session: nothing was said")
        session_name = got.task.sessions[0].name
    response: task_pb2s.GetSessionResponse = await tasks.GetSession(  # type: ignore[misc]
        task_pb2s.GetSessionRequest(name=session_name), metadata=md(), timeout=deadline
    )
    if response.session.sandbox_session:
        return str(response.session.sandbox_session)
    status = readable(session_pb2.SessionStatus.Name(response.session.status), "SESSION_STATUS_")
    if not live:
        raise CliError(
            f"{session_name} has not started yet ({status}): nothing was said; `logs -f` waits for it"
        )
    print(f"foundryctl: waiting for {session_name} to start ({status})…", file=sys.stderr, flush=True)

    def watch_session(token: str) -> Any:
        request = task_pb2s.WatchSessionRequest(name=session_name, resume_token=token)
        return tasks.WatchSession(request, metadata=md())

    async for change in follow(watch_session):
        for item in change.items:
            session = session_pb2.Session()
            if item.resource.Unpack(session) and session.sandbox_session:
                return str(session.sandbox_session)
    raise CliError(f"the stream of {session_name} ended before the session started")


async def _watch(open_call: Callable[[str], Any], out: Out) -> None:
    """Print every event (JSON), or what changed (text); the follower resumes after
    rotate/draining/lagging ends and bootstraps again after RESET or an expired token."""
    changes = ChangePrinter(lambda line: print(line, flush=True))
    try:
        async for event in follow(open_call):
            if out.json:
                out.emit(_dict(event), "")
            else:
                changes.event(_dict(event))
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
