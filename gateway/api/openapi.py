"""OpenAPI 3.1 document of the HTTP API, generated from the route table and the proto descriptors
(schemas follow the proto3 JSON mapping), plus the hand-written auth, stream and webhook routes."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from gateway.api.table import Rpc, openapi_path

_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "example": "1.5s"},
    "google.protobuf.FieldMask": {"type": "string", "description": "comma-separated camelCase paths"},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "additionalProperties": True,
    },
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
}
_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "uint64"},
    FieldDescriptor.TYPE_SINT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    FieldDescriptor.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "uint32"},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "format": "uint32"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
}
_ERROR = {
    "type": "object",
    "required": ["code", "status", "message", "details"],
    "properties": {
        "code": {"type": "integer", "description": "google.rpc.Code"},
        "status": {"type": "string", "example": "NOT_FOUND"},
        "message": {"type": "string"},
        "details": {"type": "array", "items": {"$ref": "#/components/schemas/google.protobuf.Any"}},
    },
}
_EXTRA_PATHS: dict[str, dict[str, Any]] = {
    "/v1/auth/session": {"get": {"summary": "The signed-in user and which sign-in methods are enabled."}},
    "/v1/auth/dev/signIn": {"post": {"summary": "Offline dev sign-in by login (sets the session cookie)."}},
    "/v1/auth/github/start": {"get": {"summary": "Redirect to GitHub OAuth (scopes read:org, repo)."}},
    "/v1/auth/github/callback": {"get": {"summary": "GitHub OAuth callback (sets the session cookie)."}},
    "/v1/auth/signOut": {"post": {"summary": "Revoke the session and clear the cookie."}},
    "/v1/auth/token": {"post": {"summary": "A signed caller token for foundryctl."}},
    "/v1/stream": {
        "get": {"summary": "The tab's multiplexed Server-Sent Events stream (see gateway/README.md)."}
    },
    "/v1/streams/{stream}:subscribe": {"post": {"summary": "Add topics to an open stream."}},
    "/v1/streams/{stream}:unsubscribe": {"post": {"summary": "Remove topics from an open stream."}},
    "/v1/webhooks/github": {"post": {"summary": "GitHub webhook (X-Hub-Signature-256 verified); 202."}},
}


class _Schemas:
    def __init__(self) -> None:
        self.components: dict[str, Any] = {
            "google.protobuf.Any": _WELL_KNOWN["google.protobuf.Any"],
            "Error": _ERROR,
        }

    def ref(self, descriptor: Any) -> dict[str, Any]:
        name = descriptor.full_name
        if name in _WELL_KNOWN:
            return _WELL_KNOWN[name]
        if name not in self.components:
            self.components[name] = {}  # placeholder breaks recursion
            self.components[name] = {
                "type": "object",
                "properties": {f.json_name: self.field(f) for f in descriptor.fields},
            }
        return {"$ref": f"#/components/schemas/{name}"}

    def enum(self, descriptor: Any) -> dict[str, Any]:
        return {"type": "string", "enum": [v.name for v in descriptor.values]}

    def single(self, field: Any) -> dict[str, Any]:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            return self.ref(field.message_type)
        if field.type == FieldDescriptor.TYPE_ENUM:
            return self.enum(field.enum_type)
        return dict(_SCALARS[field.type])

    def field(self, field: Any) -> dict[str, Any]:
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            return {
                "type": "object",
                "additionalProperties": self.single(field.message_type.fields_by_name["value"]),
            }
        if field.is_repeated:
            return {"type": "array", "items": self.single(field)}
        return self.single(field)


def document(
    routes: tuple[Rpc, ...], *, title: str = "Foundry gateway", version: str = "v1"
) -> dict[str, Any]:
    """The OpenAPI document (a JSON-ready dict)."""
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for rpc in routes:
        path, params = openapi_path(rpc.template)
        request = rpc.request_class.DESCRIPTOR
        bound_top = {p.split(".")[0] for p in rpc.path_fields} | {rpc.session_field}
        operation: dict[str, Any] = {
            "operationId": f"{rpc.service}.{rpc.method}",
            "summary": f"{rpc.grpc_path}",
            "parameters": [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params
            ],
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"application/json": {"schema": schemas.ref(rpc.response_class.DESCRIPTOR)}},
                },
                "default": {
                    "description": "Error",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                },
            },
        }
        if rpc.body:
            body_schema = (
                schemas.ref(request) if rpc.body == "*" else schemas.field(request.fields_by_name[rpc.body])
            )
            operation["requestBody"] = {"content": {"application/json": {"schema": body_schema}}}
        else:
            for f in request.fields:
                if f.name in bound_top or f.type == FieldDescriptor.TYPE_MESSAGE:
                    continue
                operation["parameters"].append(
                    {"name": f.json_name, "in": "query", "schema": schemas.field(f)}
                )
        if not rpc.public:
            operation["security"] = [{"session": []}]
        paths.setdefault(path, {})[rpc.http_method.lower()] = operation
    for path, ops in _EXTRA_PATHS.items():
        paths.setdefault(path, {}).update(ops)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas.components,
            "securitySchemes": {"session": {"type": "apiKey", "in": "cookie", "name": "foundry_session"}},
        },
    }
