"""Topics a browser tab can subscribe to, and the upstream Watch RPC behind each.

Topic keys are `<kind>:<resource name>` (the `app` topic has no name: it is the caller's own auth
session):

    app                                                          OrganizationService.WatchApp
    organization:organizations/{org}                             OrganizationService.WatchOrganizationSummary
    task:organizations/{org}/tasks/{task}                        TaskService.WatchTask
    session:organizations/{org}/tasks/{task}/sessions/{s}        TaskService.WatchSession
    transcript:organizations/{org}/sandboxes/{sb}/sessions/{s}   SandboxService.WatchSessionEvents
    processes:organizations/{org}/sandboxes/{sb}                 SandboxService.WatchProcesses
    output:organizations/{org}/sandboxes/{sb}/processes/{p}      SandboxService.WatchProcessOutput
    unread:organizations/{org}                                   TaskService.WatchUserTaskStates

`unread` is per user: its key carries the subscriber's user (`unread:organizations/{org}/users/{u}`),
so tabs of one user share an upstream and no other user's tab ever joins it, and that upstream runs
as the user (signed by the gateway) instead of as the gateway; it is the one topic whose per-user
items (the user's own UserTaskStates) are sent to the browser.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf import message_factory
from google.protobuf.message import Message

from gateway.api.table import SERVICES
from gateway.errors import GatewayError
from services.platform.identity import Caller
from services.platform.settings import ServiceName

_ID = r"[A-Za-z0-9][A-Za-z0-9._~-]*"


@dataclass(frozen=True)
class TopicSpec:
    """How one kind of topic maps onto its upstream Watch RPC."""

    kind: str
    pattern: str  # regex of the resource name in the key
    service: ServiceName
    method: str
    field: str  # request field receiving the watched resource name
    to_resource: Callable[[str], str] = lambda name: name
    name_of: Callable[[str], str] | None = None  # the request's `name`, when `field` is another field
    per_user: bool = False  # keyed by the subscriber's user, run as that user, per-user items sent

    def request_class(self) -> type[Message]:
        return message_factory.GetMessageClass(SERVICES[self.service].methods_by_name[self.method].input_type)

    def response_class(self) -> type[Message]:
        return message_factory.GetMessageClass(
            SERVICES[self.service].methods_by_name[self.method].output_type
        )

    @property
    def grpc_path(self) -> str:
        return f"/{SERVICES[self.service].full_name}/{self.method}"


SPECS: dict[str, TopicSpec] = {
    spec.kind: spec
    for spec in (
        TopicSpec(
            "app",
            rf"users/{_ID}/authSessions/{_ID}",
            "organization",
            "WatchApp",
            "auth_session",
            # The upstream runs as the gateway, so `users/me` would not name the user: spell it out.
            name_of=lambda auth_session: auth_session.split("/authSessions/")[0] + "/appSnapshot",
        ),
        TopicSpec(
            "organization",
            rf"organizations/{_ID}",
            "organization",
            "WatchOrganizationSummary",
            "name",
            to_resource=lambda name: f"{name}/summary",
        ),
        TopicSpec("task", rf"organizations/{_ID}/tasks/{_ID}", "task", "WatchTask", "name"),
        TopicSpec(
            "session", rf"organizations/{_ID}/tasks/{_ID}/sessions/{_ID}", "task", "WatchSession", "name"
        ),
        TopicSpec(
            "transcript",
            rf"organizations/{_ID}/sandboxes/{_ID}/sessions/{_ID}",
            "sandbox",
            "WatchSessionEvents",
            "parent",
        ),
        TopicSpec(
            "processes", rf"organizations/{_ID}/sandboxes/{_ID}", "sandbox", "WatchProcesses", "parent"
        ),
        TopicSpec(
            "output",
            rf"organizations/{_ID}/sandboxes/{_ID}/processes/{_ID}",
            "sandbox",
            "WatchProcessOutput",
            "name",
        ),
        TopicSpec(
            "unread",
            rf"organizations/{_ID}",
            "task",
            "WatchUserTaskStates",
            "parent",
            to_resource=lambda key: key.split("/users/")[0],
            per_user=True,
        ),
    )
}
# Item types that carry one user's state; never fanned out from a shared upstream.
PER_USER_TYPES = ("foundry.task.v1.UserTaskState", "foundry.task.v1.UserSessionState")


@dataclass(frozen=True)
class Topic:
    """A parsed topic: `label` is what the browser calls it, `key` what upstreams are shared by."""

    label: str
    spec: TopicSpec
    resource: str  # the resource name in the key (for `app`: the auth session; `unread`: + /users/{u})
    caller: Caller | None = None  # who the upstream runs as (per-user topics); None = the gateway

    @property
    def key(self) -> str:
        return f"{self.spec.kind}:{self.resource}"

    @property
    def organization(self) -> str | None:
        """`organizations/{org}` the topic belongs to; None for `app`."""
        if not self.resource.startswith("organizations/"):
            return None
        return "/".join(self.resource.split("/")[:2])

    def request(self, resume_token: str) -> Message:
        message = self.spec.request_class()()
        setattr(message, self.spec.field, self.spec.to_resource(self.resource))
        if self.spec.name_of is not None:
            message.name = self.spec.name_of(self.resource)  # type: ignore[attr-defined]
        message.resume_token = resume_token  # type: ignore[attr-defined]
        return message


def parse(label: str, *, auth_session: str, caller: Caller | None = None) -> Topic:
    """Parse a browser topic label; GatewayError(INVALID_ARGUMENT) when it is not one of SPECS.

    `caller` is the subscriber (a per-user topic needs one: its key and upstream are that user's)."""
    if label == "app":
        return Topic(label, SPECS["app"], auth_session)
    kind, _, resource = label.partition(":")
    spec = SPECS.get(kind)
    if spec is None or spec.kind == "app" or not re.fullmatch(spec.pattern, resource):
        raise GatewayError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown topic {label!r}", reason="BAD_TOPIC")
    if spec.per_user:
        if caller is None or not caller.user_id:
            raise GatewayError(
                grpc.StatusCode.PERMISSION_DENIED, f"{label!r} needs a signed-in user", reason="NOT_A_USER"
            )
        return Topic(label, spec, f"{resource}/users/{caller.user_id}", caller)
    return Topic(label, spec, resource)
