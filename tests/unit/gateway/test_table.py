"""The declarative route table, request building from body/query/path, the OpenAPI document, the
error mapping and the SSE framing (no network)."""

from __future__ import annotations

import time
from unittest import mock

import grpc
import pytest
from foundry.common.v1 import watch_pb2
from foundry.task.v1 import task_pb2, task_service_pb2, user_task_state_pb2
from google.protobuf import any_pb2
from itsdangerous import TimestampSigner
from starlette.requests import Request

from gateway.api.openapi import document
from gateway.api.table import ROUTES, SERVICES, Rpc, compile_template, find, openapi_path
from gateway.auth.sessions import Principal, SessionCodec
from gateway.codec import DecodeError, merge_dict, query_to_dict, set_path
from gateway.errors import HTTP_STATUS, GatewayError, gateway_error_body
from gateway.stream import frames, topics
from gateway.stream.routes import _wanted


class TestRouteTable:
    def test_custom_verb_binds_the_full_resource_name(self) -> None:
        rpc, bindings, _ = find(ROUTES, "POST", "/v1/organizations/acme/tasks/t1/sessions/s1:sendMessage")
        assert rpc is not None and rpc.grpc_path == "/foundry.task.v1.TaskService/SendMessage"
        assert bindings == {"name": "organizations/acme/tasks/t1/sessions/s1"}

    def test_verb_does_not_leak_into_the_last_segment(self) -> None:
        rpc, bindings, _ = find(ROUTES, "GET", "/v1/organizations/acme/tasks/t1:archive")
        assert rpc is None  # GET on a POST-only verb
        rpc, bindings, _ = find(ROUTES, "GET", "/v1/organizations/acme/tasks/t1")
        assert (
            rpc is not None
            and rpc.method == "GetTask"
            and bindings == {"name": "organizations/acme/tasks/t1"}
        )

    def test_known_path_with_wrong_method_is_told_apart_from_unknown_path(self) -> None:
        assert find(ROUTES, "DELETE", "/v1/organizations/acme/tasks/t1")[2] is True
        assert find(ROUTES, "GET", "/v1/nothing/here")[2] is False

    def test_nested_field_binding(self) -> None:
        rpc, bindings, _ = find(ROUTES, "PATCH", "/v1/organizations/a/tasks/t/userStates/me")
        assert rpc is not None and bindings == {
            "user_task_state.name": "organizations/a/tasks/t/userStates/me"
        }
        message = user_task_state_pb2.UserTaskState()
        request = task_service_pb2.UpdateUserTaskStateRequest(user_task_state=message)
        set_path(request, "user_task_state.name", bindings["user_task_state.name"])
        assert request.user_task_state.name == "organizations/a/tasks/t/userStates/me"

    def test_every_route_names_an_existing_unary_rpc(self) -> None:
        for rpc in ROUTES:
            assert not rpc.descriptor.server_streaming, rpc
            assert rpc.request_class.DESCRIPTOR.full_name == rpc.descriptor.input_type.full_name
            if rpc.body not in ("", "*"):
                assert rpc.body in rpc.request_class.DESCRIPTOR.fields_by_name, rpc

    def test_templates_are_unambiguous(self) -> None:
        seen: dict[tuple[str, str], Rpc] = {}
        for rpc in ROUTES:
            key = (rpc.http_method, openapi_path(rpc.template)[0])
            assert key not in seen, f"{rpc} shadows {seen[key]}"
            seen[key] = rpc

    def test_segment_wildcard_matches_one_segment_only(self) -> None:
        pattern, names = compile_template("/v1/{name=organizations/*}")
        assert names == ("name",)
        assert pattern.fullmatch("/v1/organizations/acme")
        assert not pattern.fullmatch("/v1/organizations/acme/tasks")

    def test_app_snapshot_is_a_singleton_of_the_user(self) -> None:
        rpc, bindings, _ = find(ROUTES, "GET", "/v1/users/me/appSnapshot")
        assert rpc is not None and rpc.method == "GetAppSnapshot" and rpc.public
        assert bindings == {"name": "users/me/appSnapshot"}
        assert "/v1/users/{user}/appSnapshot" in document(ROUTES)["paths"]
        # WatchApp runs under the gateway's identity, so the topic names the user rather than `me`.
        request = topics.parse("app", auth_session="users/u1/authSessions/s1").request("v1.a.3")
        assert (request.name, request.auth_session, request.resume_token) == (  # type: ignore[attr-defined]
            "users/u1/appSnapshot",
            "users/u1/authSessions/s1",
            "v1.a.3",
        )

    def test_services_cover_the_four_contracts(self) -> None:
        assert set(SERVICES) == {"organization", "task", "github_data", "sandbox"}


class TestRequestDecoding:
    def test_query_parameters_are_typed_by_the_request_fields(self) -> None:
        request = task_service_pb2.ListTasksRequest()
        values = query_to_dict(
            request.DESCRIPTOR, {"pageSize": ["5"], "show_ended": ["true"], "view": ["TASK_VIEW_FULL"]}
        )
        merge_dict(values, request)
        assert (request.page_size, request.show_ended, request.view) == (5, True, task_pb2.TASK_VIEW_FULL)

    def test_unknown_query_parameter_is_rejected(self) -> None:
        with pytest.raises(DecodeError):
            query_to_dict(task_service_pb2.ListTasksRequest.DESCRIPTOR, {"nope": ["1"]})

    def test_body_with_unknown_field_is_rejected(self) -> None:
        with pytest.raises(DecodeError):
            merge_dict({"task": {"notAField": 1}}, task_service_pb2.CreateTaskRequest())


class TestOpenApi:
    def test_document_lists_every_route_with_path_parameters_and_schemas(self) -> None:
        doc = document(ROUTES)
        operation = doc["paths"][
            "/v1/organizations/{organization}/tasks/{task}/sessions/{session}:sendMessage"
        ]["post"]
        assert [p["name"] for p in operation["parameters"]] == ["organization", "task", "session"]
        assert operation["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/foundry.task.v1.SendMessageRequest"
        }
        listed = doc["paths"]["/v1/organizations/{organization}/tasks"]["get"]
        assert {"pageSize", "showEnded", "view"} <= {p["name"] for p in listed["parameters"]}
        task = doc["components"]["schemas"]["foundry.task.v1.Task"]["properties"]
        assert task["createTime"] == {"type": "string", "format": "date-time"}
        assert task["status"]["type"] == "string" and "TASK_STATUS_IDLE" in task["status"]["enum"]
        assert sum(len(ops) for ops in doc["paths"].values()) >= len(ROUTES)


class TestErrors:
    @pytest.mark.parametrize(
        ("code", "status"),
        [
            (grpc.StatusCode.NOT_FOUND, 404),
            (grpc.StatusCode.INVALID_ARGUMENT, 400),
            (grpc.StatusCode.FAILED_PRECONDITION, 400),
            (grpc.StatusCode.ALREADY_EXISTS, 409),
            (grpc.StatusCode.PERMISSION_DENIED, 403),
            (grpc.StatusCode.UNAUTHENTICATED, 401),
            (grpc.StatusCode.UNAVAILABLE, 503),
            (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
            (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
            (grpc.StatusCode.UNIMPLEMENTED, 501),
        ],
    )
    def test_grpc_status_maps_to_standard_http_status(self, code: grpc.StatusCode, status: int) -> None:
        assert HTTP_STATUS[code] == status

    def test_every_grpc_code_has_an_http_status(self) -> None:
        assert set(HTTP_STATUS) == set(grpc.StatusCode)

    def test_gateway_error_body_has_code_message_and_error_info(self) -> None:
        status, body = gateway_error_body(
            GatewayError(grpc.StatusCode.PERMISSION_DENIED, "no", reason="CSRF")
        )
        assert status == 403
        assert body == {
            "code": 7,
            "status": "PERMISSION_DENIED",
            "message": "no",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "CSRF",
                    "domain": "foundry.gateway",
                    "metadata": {},
                }
            ],
        }


class TestFrames:
    def test_frame_is_id_event_and_one_json_data_line(self) -> None:
        frame = frames.upsert("task:organizations/a/tasks/t", b'{"name":"x\\ny"}')
        wire = frames.encode(frame, "POS")
        data = b'{"topic":"task:organizations/a/tasks/t","item":{"name":"x\\ny"}}'
        assert wire == b"id: POS\nevent: upsert\ndata: " + data + b"\n\n"
        assert wire.count(b"\n") == 4

    def test_position_round_trips_and_garbage_decodes_to_nothing(self) -> None:
        tokens = {"app": "v1.a.3", "organization:organizations/acme": ""}
        assert frames.decode_position(frames.encode_position(tokens)) == tokens
        assert frames.decode_position("not base64 !!") == {}
        assert frames.decode_position("") == {}

    def test_per_user_items_are_never_rendered(self) -> None:
        packed = any_pb2.Any()
        packed.Pack(user_task_state_pb2.UserTaskState(name="organizations/a/tasks/t/userStates/u"))
        assert frames.item_json(watch_pb2.WatchItem(name="x", resource=packed)) is None
        packed.Pack(task_pb2.TaskSummary(name="organizations/a/tasks/t", title="hi"))
        rendered = frames.item_json(
            watch_pb2.WatchItem(name="organizations/a/tasks/t", resource=packed, version="v1")
        )
        assert rendered is not None and b'"title":"hi"' in rendered and b'"@type"' in rendered

    def test_end_frame_carries_reason_and_resume_from(self) -> None:
        assert frames.end("draining", "P").data == b'{"reason":"draining","resume_from":"P"}'

    def test_last_event_id_wins_over_a_stale_resume_query(self) -> None:
        """EventSource reconnects by itself to the URL it was opened with (maybe `?resume=<older>`)
        and sends the newer position in Last-Event-ID: that one must be used."""
        topic = "organization:organizations/acme"
        old, new = frames.encode_position({topic: "old"}), frames.encode_position({topic: "new"})
        scope = {"type": "http", "method": "GET", "path": "/v1/stream", "query_string": b"", "headers": []}
        resumed = Request({**scope, "query_string": f"resume={old}".encode()})
        assert _wanted(resumed) == [(topic, "old")]
        reconnected = Request(
            {**scope, "query_string": f"resume={old}".encode(), "headers": [(b"last-event-id", new.encode())]}
        )
        assert _wanted(reconnected) == [(topic, "new")]

    def test_a_resumed_stream_adds_the_listed_topics_it_lacks(self) -> None:
        """A tab whose `:subscribe` reached another gateway replica reopens with its position and every
        topic it listens to: the position's topics resume, the new ones start from a snapshot."""
        org, task = "organization:organizations/acme", "task:organizations/acme/tasks/t1"
        position = frames.encode_position({org: "tok"})
        query = f"resume={position}&topic={org}&topic={task}".encode()
        scope = {"type": "http", "method": "GET", "path": "/v1/stream", "query_string": query, "headers": []}
        assert _wanted(Request(scope)) == [(org, "tok"), (task, "")]


class TestSessionCookie:
    def test_cookie_is_signed_and_expires_with_its_ttl(self) -> None:
        codec = SessionCodec("secret", ttl_seconds=60)
        alice = Principal(auth_session="users/u1/authSessions/s1", user="users/u1", login="alice")
        assert codec.decode(codec.encode(alice)) == alice
        assert SessionCodec("another secret", ttl_seconds=60).decode(codec.encode(alice)) is None
        with mock.patch.object(TimestampSigner, "get_timestamp", return_value=int(time.time()) - 120):
            stale = codec.encode(alice)
        assert codec.decode(stale) is None
