"""The declarative HTTP → gRPC route table: adding an RPC to the HTTP API is one line in `ROUTES`.

Each `Rpc` names an HTTP method, a path template in the `google.api.http` style, the service and
method it calls, and where the request comes from:

    Rpc("POST", "/v1/{name=organizations/*/tasks/*/sessions/*}:sendMessage", "task", "SendMessage", body="*")

- `{field=pattern}` binds the matched resource name (the pattern's literal segments included) to the
  request field `field` (dotted paths reach into sub-messages); `*` matches one segment.
- `body="*"`: the JSON body is the whole request; `body="task"`: the body is that field; `""`: no body.
- The query string fills the remaining scalar fields (`?pageSize=10&showEnded=true`).
- `session_field`: a request field filled with the caller's auth session name (never from the client).
- `public`: served without a signed-in caller.

Request and response classes come from the service descriptors, so the table never goes stale
against `proto/`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from foundry.github_data.v1 import github_data_service_pb2
from foundry.organization.v1 import organization_service_pb2
from foundry.sandbox.v1 import sandbox_service_pb2
from foundry.task.v1 import task_service_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from services.platform.settings import ServiceName

SERVICES: dict[ServiceName, ServiceDescriptor] = {
    "organization": organization_service_pb2.DESCRIPTOR.services_by_name["OrganizationService"],
    "task": task_service_pb2.DESCRIPTOR.services_by_name["TaskService"],
    "github_data": github_data_service_pb2.DESCRIPTOR.services_by_name["GithubDataService"],
    "sandbox": sandbox_service_pb2.DESCRIPTOR.services_by_name["SandboxService"],
}
_VAR = re.compile(r"\{([a-z_.]+)(?:=([^}]+))?\}")
_SEGMENT = r"[^/:]+"


@dataclass(frozen=True)
class Rpc:
    """One HTTP route bound to one unary RPC."""

    http_method: str
    template: str
    service: ServiceName
    method: str
    body: str = ""
    session_field: str = ""
    public: bool = False

    @cached_property
    def descriptor(self) -> MethodDescriptor:
        return SERVICES[self.service].methods_by_name[self.method]

    @cached_property
    def request_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.descriptor.input_type)

    @cached_property
    def response_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.descriptor.output_type)

    @property
    def grpc_path(self) -> str:
        """`/foundry.task.v1.TaskService/SendMessage`."""
        return f"/{SERVICES[self.service].full_name}/{self.method}"

    @cached_property
    def _compiled(self) -> tuple[re.Pattern[str], tuple[str, ...]]:
        return compile_template(self.template)

    def match(self, path: str) -> dict[str, str] | None:
        """Request-field → value bindings if `path` fits the template, else None."""
        pattern, names = self._compiled
        found = pattern.fullmatch(path)
        if found is None:
            return None
        return {name: found.group(f"v{i}") for i, name in enumerate(names)}

    @property
    def path_fields(self) -> tuple[str, ...]:
        return self._compiled[1]


def compile_template(template: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    """`/v1/{name=organizations/*}:x` → (regex with groups v0.., (field names...))."""
    regex, names, pos = "", [], 0
    for i, var in enumerate(_VAR.finditer(template)):
        regex += re.escape(template[pos : var.start()])
        pattern = var.group(2) or "*"
        parts = [_SEGMENT if p == "*" else re.escape(p) for p in pattern.split("/")]
        regex += f"(?P<v{i}>{'/'.join(parts)})"
        names.append(var.group(1))
        pos = var.end()
    regex += re.escape(template[pos:])
    return re.compile(regex), tuple(names)


def openapi_path(template: str) -> tuple[str, list[str]]:
    """`/v1/{name=organizations/*/tasks/*}` → (`/v1/organizations/{organization}/tasks/{task}`, params)."""
    params: list[str] = []

    def expand(var: re.Match[str]) -> str:
        segments = (var.group(2) or var.group(1)).split("/")
        out = []
        for j, seg in enumerate(segments):
            if seg == "*":
                name = _singular(segments[j - 1]) if j else var.group(1).replace(".", "_")
                params.append(name)
                out.append("{" + name + "}")
            else:
                out.append(seg)
        return "/".join(out)

    return _VAR.sub(expand, template), params


def _singular(plural: str) -> str:
    if plural.endswith("ies"):
        return plural[:-3] + "y"
    if plural.endswith(("xes", "sses")):
        return plural[:-2]
    return plural.removesuffix("s")


_ORG = "organizations/*"
_TASK = f"{_ORG}/tasks/*"
_SESSION = f"{_TASK}/sessions/*"
_SANDBOX = f"{_ORG}/sandboxes/*"
_PROCESS = f"{_SANDBOX}/processes/*"

ROUTES: tuple[Rpc, ...] = (
    # organization: app shell, users, organizations
    Rpc(
        "GET",
        "/v1/{name=users/*/appSnapshot}",
        "organization",
        "GetAppSnapshot",
        session_field="auth_session",
        public=True,
    ),
    Rpc(
        "POST",
        "/v1/app:selectOrganization",
        "organization",
        "SelectOrganization",
        body="*",
        session_field="auth_session",
    ),
    Rpc("GET", "/v1/{name=users/*}", "organization", "GetUser"),
    Rpc("PATCH", "/v1/{user.name=users/*}", "organization", "UpdateUser", body="user"),
    Rpc("GET", "/v1/organizations", "organization", "ListOrganizations"),
    Rpc("POST", "/v1/organizations:connectLocal", "organization", "ConnectLocalOrganization", body="*"),
    Rpc("GET", f"/v1/{{name={_ORG}}}", "organization", "GetOrganization"),
    Rpc(
        "PATCH",
        f"/v1/{{organization.name={_ORG}}}",
        "organization",
        "UpdateOrganization",
        body="organization",
    ),
    Rpc("GET", f"/v1/{{parent={_ORG}}}/members", "organization", "ListMembers"),
    Rpc("POST", f"/v1/{{parent={_ORG}}}/members", "organization", "CreateMember", body="member"),
    Rpc("GET", f"/v1/{{name={_ORG}/members/*}}", "organization", "GetMember"),
    Rpc("GET", f"/v1/{{name={_ORG}/summary}}", "organization", "GetOrganizationSummary"),
    Rpc("GET", f"/v1/{{parent={_ORG}}}/auditEvents", "organization", "ListAuditEvents"),
    # Model API keys: write-only (the list shows names and times; no route returns a value).
    Rpc("GET", f"/v1/{{parent={_ORG}}}/modelCredentials", "organization", "ListModelCredentials"),
    Rpc("POST", f"/v1/{{parent={_ORG}}}/modelCredentials", "organization", "SetModelCredential", body="*"),
    Rpc("DELETE", f"/v1/{{name={_ORG}/modelCredentials/*}}", "organization", "DeleteModelCredential"),
    # task: tasks, sessions, per-user state
    Rpc("POST", f"/v1/{{parent={_ORG}}}/tasks", "task", "CreateTask", body="*"),
    Rpc("GET", f"/v1/{{parent={_ORG}}}/tasks", "task", "ListTasks"),
    Rpc("GET", f"/v1/{{name={_TASK}}}", "task", "GetTask"),
    Rpc("POST", f"/v1/{{name={_TASK}}}:materialize", "task", "MaterializeTask", body="*"),
    Rpc("POST", f"/v1/{{name={_TASK}}}:rename", "task", "RenameTask", body="*"),
    Rpc("POST", f"/v1/{{name={_TASK}}}:setOwner", "task", "SetTaskOwner", body="*"),
    Rpc("POST", f"/v1/{{name={_TASK}}}:archive", "task", "ArchiveTask", body="*"),
    Rpc("POST", f"/v1/{{name={_TASK}}}:kill", "task", "KillTask", body="*"),
    Rpc("POST", f"/v1/{{name={_TASK}}}:push", "task", "PushTask", body="*"),
    Rpc("POST", f"/v1/{{name={_TASK}}}:publishPullRequest", "task", "PublishPullRequest", body="*"),
    Rpc("POST", f"/v1/{{name={_TASK}}}:revertFile", "task", "RevertFile", body="*"),
    Rpc("POST", f"/v1/{{parent={_TASK}}}/sessions", "task", "CreateSession", body="*"),
    Rpc("GET", f"/v1/{{parent={_TASK}}}/sessions", "task", "ListSessions"),
    Rpc("GET", f"/v1/{{name={_SESSION}}}", "task", "GetSession"),
    Rpc("POST", f"/v1/{{name={_SESSION}}}:sendMessage", "task", "SendMessage", body="*"),
    Rpc(
        "POST",
        f"/v1/{{name={_SESSION}/permissionRequests/*}}:answer",
        "task",
        "AnswerPermissionRequest",
        body="*",
    ),
    Rpc("POST", f"/v1/{{name={_SESSION}}}:stop", "task", "StopSession", body="*"),
    Rpc("POST", f"/v1/{{name={_SESSION}}}:close", "task", "CloseSession", body="*"),
    Rpc("POST", f"/v1/{{name={_SESSION}}}:rename", "task", "RenameSession", body="*"),
    Rpc("POST", f"/v1/{{name={_SESSION}}}:changeModel", "task", "ChangeModel", body="*"),
    Rpc("GET", f"/v1/{{name={_TASK}/userStates/*}}", "task", "GetUserTaskState"),
    Rpc(
        "PATCH",
        f"/v1/{{user_task_state.name={_TASK}/userStates/*}}",
        "task",
        "UpdateUserTaskState",
        body="user_task_state",
    ),
    Rpc(
        "PATCH",
        f"/v1/{{user_session_state.name={_SESSION}/userStates/*}}",
        "task",
        "UpdateUserSessionState",
        body="user_session_state",
    ),
    # github_data: repositories, pull requests, sync
    Rpc("GET", f"/v1/{{parent={_ORG}}}/repositories", "github_data", "ListRepositories"),
    Rpc("GET", f"/v1/{{name={_ORG}/repositories/*}}", "github_data", "GetRepository"),
    Rpc("GET", f"/v1/{{parent={_ORG}/repositories/*}}/pullRequests", "github_data", "ListPullRequests"),
    Rpc("GET", f"/v1/{{name={_ORG}/repositories/*/pullRequests/*}}", "github_data", "GetPullRequest"),
    Rpc("GET", f"/v1/{{name={_ORG}/connection}}", "github_data", "GetConnection"),
    Rpc("GET", f"/v1/{{name={_ORG}/syncStatus}}", "github_data", "GetSyncStatus"),
    Rpc("POST", f"/v1/{{name={_ORG}/syncStatus}}:requestSync", "github_data", "RequestSync", body="*"),
    # sandbox: agents, sandboxes (read), git state, transcript, processes
    Rpc("GET", "/v1/agents", "sandbox", "ListAgents"),
    Rpc("GET", f"/v1/{{parent={_ORG}}}/sandboxes", "sandbox", "ListSandboxes"),
    Rpc("GET", f"/v1/{{name={_SANDBOX}}}", "sandbox", "GetSandbox"),
    Rpc("GET", f"/v1/{{name={_SANDBOX}/gitState}}", "sandbox", "GetGitState"),
    Rpc("GET", f"/v1/{{name={_SANDBOX}}}/fileContent", "sandbox", "GetFileContent"),
    Rpc("GET", f"/v1/{{parent={_SANDBOX}/sessions/*}}/events", "sandbox", "ListSessionEvents"),
    Rpc("POST", f"/v1/{{parent={_SANDBOX}}}/processes", "sandbox", "CreateProcess", body="*"),
    Rpc("GET", f"/v1/{{parent={_SANDBOX}}}/processes", "sandbox", "ListProcesses"),
    Rpc("GET", f"/v1/{{name={_PROCESS}}}", "sandbox", "GetProcess"),
    Rpc("GET", f"/v1/{{name={_PROCESS}}}/logs", "sandbox", "GetProcessLogs"),
    Rpc("POST", f"/v1/{{name={_PROCESS}}}:stop", "sandbox", "StopProcess", body="*"),
    Rpc("POST", f"/v1/{{name={_PROCESS}}}:kill", "sandbox", "KillProcess", body="*"),
    Rpc("DELETE", f"/v1/{{name={_PROCESS}}}", "sandbox", "DeleteProcess"),
    Rpc("POST", f"/v1/{{name={_PROCESS}}}:writeInput", "sandbox", "WriteProcessInput", body="*"),
    Rpc("POST", f"/v1/{{name={_PROCESS}}}:resize", "sandbox", "ResizeProcess", body="*"),
)


def find(routes: tuple[Rpc, ...], method: str, path: str) -> tuple[Rpc | None, dict[str, str], bool]:
    """(route, path bindings, path_known): path_known tells 405 from 404 when no route matched."""
    path_known = False
    for rpc in routes:
        bindings = rpc.match(path)
        if bindings is None:
            continue
        if rpc.http_method == method:
            return rpc, bindings, True
        path_known = True
    return None, {}, path_known


def describe(rpc: Rpc) -> dict[str, Any]:
    """A short machine-readable description (used by tests and the OpenAPI generator)."""
    return {"method": rpc.http_method, "template": rpc.template, "rpc": rpc.grpc_path, "body": rpc.body}
