"""OpenAPI entries of issue 16: webhook endpoints (/v1/webhooks…) and API keys (/v1/keys…).

Kept apart from api/openapi.py, which merges them into the document it serves.
"""

from __future__ import annotations

from typing import Any

from api.openapi import _json, _op, _q, _ref
from shared.webhooks import EVENT_TYPES

_TIME = {"type": ["string", "null"], "format": "date-time"}
_EVENT_TYPES = {"type": "array", "items": {"enum": list(EVENT_TYPES)}, "minItems": 1, "uniqueItems": True}
_URL = {"type": "string", "format": "uri", "maxLength": 2048,
        "description": "https only (unless the server allows http); not a loopback, private or link-local address"}
_ENDPOINT_FIELDS = {"url": _URL, "description": {"type": ["string", "null"], "maxLength": 200},
                    "event_types": _EVENT_TYPES, "enabled": {"type": "boolean"}}
_ENDPOINT_OUT = {"type": "object", "required": ["id", "url", "event_types", "enabled"], "properties": {
    "id": {"type": "string"}, "url": {"type": "string"}, "description": {"type": ["string", "null"]},
    "event_types": {"type": "array", "items": {"type": "string"}}, "enabled": {"type": "boolean"},
    "disabled_reason": {"type": ["string", "null"]}, "created_at": {"type": "string"},
    "updated_at": {"type": "string"}, "previous_secret_valid_until": _TIME,
    "secret": {"type": "string", "description": "whsec_…: only in the answer to a create or a rotation"}}}
_DELIVERY = {"type": "object", "required": ["id", "event_id", "event_type", "state"], "properties": {
    "id": {"type": "string"}, "event_id": {"type": "string", "description": "the webhook-id header"},
    "event_type": {"type": "string"}, "state": {"enum": ["pending", "delivered", "failed"]},
    "attempts": {"type": "integer"}, "last_status_code": {"type": ["integer", "null"]},
    "last_error": {"type": ["string", "null"]}, "next_attempt_at": _TIME, "created_at": {"type": "string"},
    "delivered_at": _TIME, "payload": {"type": "object"},
    "attempt_log": {"type": "array", "items": {"type": "object", "properties": {
        "started_at": {"type": "string"}, "status_code": {"type": ["integer", "null"]},
        "error": {"type": ["string", "null"]}, "latency_ms": {"type": ["number", "null"]}}}}}}
_KEY_OUT = {"type": "object", "required": ["id", "role"], "properties": {
    "id": {"type": "string"}, "role": {"enum": ["admin", "sender", "viewer"]}, "label": {"type": ["string", "null"]},
    "created_at": {"type": "string"}, "expires_at": _TIME, "last_used_at": _TIME, "revoked_at": _TIME,
    "key": {"type": "string", "description": "tm_…: only in the answer to a create"}}}
_CONFLICT = "the endpoint is disabled: enable it first"
_EXPIRES = {"type": ["string", "null"], "format": "date-time", "description": "in the future; null: never"}


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _admin(summary: str, ok: dict[str, Any], *, status: str = "200", body: dict[str, Any] | None = None,
           params: tuple[str, ...] = (), query: list[dict[str, Any]] | None = None,
           errors: tuple[str, ...] = ()) -> dict[str, Any]:
    """An admin operation: 403 for other roles, 404 when it names something the tenant does not have."""
    op = _op(summary, ok, status=status, body=body, params=[*map(_path, params), *(query or [])] or None,
             errors=("403", *(("404",) if params else ())))
    for code in errors:
        op["responses"][code] = _json(_ref("Error"), _CONFLICT)
    if status == "204":
        op["responses"]["204"] = {"description": "done"}
    return op


def paths() -> dict[str, Any]:
    """The /v1/webhooks and /v1/keys paths."""
    items = {"type": "object", "properties": {"items": {"type": "array", "items": _ref("WebhookEndpoint")}}}
    page = {"type": "object", "properties": {"items": {"type": "array", "items": _ref("WebhookDelivery")},
                                             "next_cursor": {"type": ["string", "null"]}}}
    keys = {"type": "object", "properties": {"items": {"type": "array", "items": _ref("ApiKeyOut")}}}
    endpoint_in = {"type": "object", "additionalProperties": False, "required": ["url"],
                   "properties": _ENDPOINT_FIELDS}
    one, delivery = ("id",), ("id", "delivery_id")
    return {
        "/v1/webhooks": {
            "get": _admin("The tenant's webhook endpoints (admin)", items),
            "post": _admin("Add an endpoint; the answer carries its signing secret, once (admin)",
                           _ref("WebhookEndpoint"), status="201", body=endpoint_in)},
        "/v1/webhooks/{id}": {
            "get": _admin("One endpoint (admin)", _ref("WebhookEndpoint"), params=one),
            "patch": _admin("Change url, description, event_types or enabled (admin)", _ref("WebhookEndpoint"),
                            params=one, body={"type": "object", "additionalProperties": False,
                                              "properties": _ENDPOINT_FIELDS}),
            "delete": _admin("Delete an endpoint and its delivery log (admin)", {}, status="204", params=one)},
        "/v1/webhooks/{id}/secret:rotate": {"post": _admin(
            "A new signing secret, shown once; the previous one signs beside it for the grace period (admin)",
            _ref("WebhookEndpoint"), params=one)},
        "/v1/webhooks/{id}/deliveries": {"get": _admin("The endpoint's delivery log, newest first (admin)", page,
                                                       params=one, query=[
            _q("state", {"enum": ["pending", "delivered", "failed"]}), _q("cursor", {"type": "string"}),
            _q("limit", {"type": "integer", "minimum": 1, "maximum": 200})])},
        "/v1/webhooks/{id}/deliveries/{delivery_id}": {"get": _admin(
            "One delivery with its payload and attempts (admin)", _ref("WebhookDelivery"), params=delivery)},
        "/v1/webhooks/{id}/deliveries/{delivery_id}:replay": {"post": _admin(
            "Deliver again: same webhook-id, fresh retry window (admin)", _ref("WebhookDelivery"), status="202",
            params=delivery, errors=("409",))},
        "/v1/keys": {
            "get": _admin("The tenant's API keys, never the keys themselves (admin)", keys),
            "post": _admin("Create a key; the answer carries it, once (admin)", _ref("ApiKeyOut"), status="201",
                           body={"type": "object", "additionalProperties": False, "required": ["role"],
                                 "properties": {"role": {"enum": ["admin", "sender", "viewer"]},
                                                "label": {"type": ["string", "null"], "maxLength": 200},
                                                "expires_at": _EXPIRES}})},
        "/v1/keys/{id}": {
            "patch": _admin("Give a key an expiry, or none (admin)", _ref("ApiKeyOut"), params=one,
                            body={"type": "object", "additionalProperties": False, "required": ["expires_at"],
                                  "properties": {"expires_at": _EXPIRES}}),
            "delete": _admin("Revoke a key (admin)", {}, status="204", params=one)},
    }


SCHEMAS = {"WebhookEndpoint": _ENDPOINT_OUT, "WebhookDelivery": _DELIVERY, "ApiKeyOut": _KEY_OUT}
