"""The OpenAPI 3.1 document of /v1, written by hand and served at /v1/openapi.json."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from api.provider_input import PROVIDERS, SERVICES
from shared.clouds import CLOUDS
from shared.models import State, WaitReason
from shared.senders import MAX_DAILY_RECIPIENT_LIMIT, MAX_SENDERS, SENDER_NAME

_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                   "field": {"type": ["string", "null"]}, "detail": {"type": "string"},
                   "diagnosis": {"$ref": "#/components/schemas/Diagnosis"}}}}}
_DIAGNOSIS = {"type": ["object", "null"], "properties": {"cause": {"type": "string"}, "fix": {"type": "string"}}}
_LIMIT = {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_DAILY_RECIPIENT_LIMIT,
          "description": "the tenant's external recipients per rolling 24 h across its senders (Exchange's "
                         "tenant external recipient rate limit, kept ahead); null: not kept"}
_PROVIDER_IN = {"type": "object", "additionalProperties": False, "properties": {
    "provider": {"enum": list(PROVIDERS)}, "service": {"enum": list(SERVICES)},
    "sender_name": {"type": ["string", "null"], "maxLength": 200},
    "sender_address": {"type": "string", "format": "idn-email"}, "reply_to": {"type": ["string", "null"]},
    "azure_tenant": {"type": "string", "description": "Directory (tenant) ID GUID or a verified domain"},
    "client_id": {"type": "string", "format": "uuid"},
    "client_secret": {"type": ["string", "null"], "writeOnly": True,
                      "description": "the secret's Value; omit it and certificate_pem to keep the stored credential "
                                     "(same app and tenant)"},
    "certificate_pem": {"type": ["string", "null"], "writeOnly": True, "maxLength": 65536,
                        "description": "instead of client_secret: a PEM private key (unencrypted RSA) followed by "
                                       "its PEM certificate, whose public part is uploaded to the app registration"},
    "secret_expires_at": {"type": ["string", "null"], "description": "ISO 8601 date (a certificate's own "
                                                                     "notAfter is used instead)"},
    "admin_contact_email": {"type": ["string", "null"], "format": "idn-email",
                            "description": "who gets the reminders 30 and 7 days before the credential expires"},
    "cloud": {"enum": sorted(CLOUDS)},
    "daily_external_recipient_limit": _LIMIT,
    "senders": {"type": ["object", "null"], "maxProperties": MAX_SENDERS,
                "description": "named senders besides the default one (sender_address, sender_name, reply_to), "
                               "all under this app; under `default` only daily_recipient_limit may differ",
                "propertyNames": {"pattern": SENDER_NAME.pattern},
                "additionalProperties": {"$ref": "#/components/schemas/Sender"}}}}
_SENDER = {"type": "object", "additionalProperties": False, "properties": {
    "address": {"type": "string", "format": "idn-email", "description": "required except under `default`"},
    "display_name": {"type": ["string", "null"], "maxLength": 200},
    "reply_to": {"type": ["string", "null"], "format": "idn-email"},
    "daily_recipient_limit": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_DAILY_RECIPIENT_LIMIT,
                              "description": "recipients per rolling 24 h from this mailbox; null: the "
                                             "platform's default (Exchange Online's 10,000)"}}}
# {"provider": "platform"} reverts to the platform default; its other (known) fields are then not used.
_PLATFORM_IN = {"type": "object", "required": ["provider"], "properties": {"provider": {"const": "platform"}}}
_EXPIRY = {"expires_at": {"type": ["string", "null"], "description": "null: unknown, so no reminders"},
           "expires_in_days": {"type": ["integer", "null"]},
           "expiry_source": {"enum": ["entered", "graph", "certificate", "kept", None],
                             "description": "entered by the admin, read from Graph (the app holds "
                                            "Application.Read.All), the certificate's notAfter, or kept from the "
                                            "version before"}}
_PROVIDER_OUT = {"type": "object", "properties": {
    "provider": {"enum": list(PROVIDERS)}, "service": {"enum": [*SERVICES, "smtp"]}, "version": {"type": "integer"},
    "sender_name": {"type": ["string", "null"]}, "sender_address": {"type": "string"},
    "reply_to": {"type": ["string", "null"]}, "azure_tenant": {"type": "string"}, "client_id": {"type": "string"},
    "cloud": {"type": "string"}, "status": {"enum": ["active", "credentials_expired", "not_configured"]},
    "admin_contact_email": {"type": ["string", "null"]}, "credential_type": {"enum": ["secret", "certificate"]},
    "client_secret": {"type": ["object", "null"], "properties": {"last4": {"type": "string"}, **_EXPIRY}},
    "certificate": {"type": ["object", "null"], "properties": {
        "thumbprint": {"type": "string", "description": "SHA-1, hex, as Entra ID shows it"}, **_EXPIRY}},
    "updated_at": {"type": ["string", "null"]}, "updated_by": {"type": ["string", "null"]},
    "daily_external_recipient_limit": _LIMIT,
    "mail_readwrite": {"type": ["boolean", "null"], "description": "whether the token of the save held "
                       "Mail.ReadWrite, which attachments of 3 MiB or more need (a draft and an upload session); "
                       "null: not known"},
    "senders": {"type": "object", "description": "every sender by name, `default` included",
                "additionalProperties": {"$ref": "#/components/schemas/Sender"}},
    "domain_checks": {"$ref": "#/components/schemas/DomainChecks"}}}
_DOMAIN_CHECKS = {"type": ["object", "null"], "description": "SPF, DKIM (Graph senders) and DMARC of the sender's "
                  "domain, through the server's resolver, cached; null without a sender domain",
                  "required": ["domain", "checked_at", "results"], "properties": {
                      "domain": {"type": "string"}, "checked_at": {"type": "string"},
                      "results": {"type": "array", "items": {
                          "type": "object", "required": ["check", "status", "name", "message"], "properties": {
                              "check": {"enum": ["spf", "dkim", "dmarc"]}, "status": {"enum": ["pass", "warn", "fail"]},
                              "name": {"type": "string"}, "message": {"type": "string"},
                              "fix": {"type": ["string", "null"]}, "found": {"type": ["string", "null"]}}}}}}
_SETUP_GUIDE = {"type": "object", "required": ["client_id", "senders", "cloud", "steps"], "properties": {
    "client_id": {"type": "string"}, "senders": {"type": "array", "items": {"type": "string"}},
    "cloud": {"enum": sorted(CLOUDS)}, "portal": {"type": "string"}, "graph_host": {"type": "string"},
    "enterprise_app_object_id": {"type": ["string", "null"], "description": "the app's service principal object id "
                                 "when read from Graph at the last save, else null (step register says how to "
                                 "find it)"},
    "steps": {"type": "array", "items": {"type": "object", "required": ["id", "title", "text", "commands"],
                                         "properties": {"id": {"type": "string"}, "title": {"type": "string"},
                                                        "text": {"type": "array", "items": {"type": "string"}},
                                                        "commands": {"type": "array", "items": {"type": "string"},
                                                                     "description": "PowerShell, one per line"}}}}}}
_TEST_RESULT = {"type": "object", "required": ["result"], "properties": {
    "result": {"enum": ["sent", "failed"]}, "request_id": {"type": ["string", "null"]},
    "code": {"type": "string"}, "message": {"type": "string"}, "http_status": {"type": ["integer", "null"]},
    "smtp_status": {"type": "integer"}, "message_id": {"type": "string"},
    "diagnosis": {"$ref": "#/components/schemas/Diagnosis"}, "sender": {"type": "string"},
    "named_sender": {"type": "string"}, "notice": {"$ref": "#/components/schemas/Diagnosis"}}}
_COUNT = {"type": "integer", "minimum": 0}
_BUDGET = {"type": "object", "required": ["recipients", "limit", "remaining", "next_free_at"], "properties": {
    "recipients": _COUNT, "limit": _COUNT, "remaining": _COUNT, "window_s": {"type": "number"},
    "next_free_at": {"type": "string", "description": "when one more recipient may go (now if remaining > 0)"},
    "source": {"enum": ["redis", "database"]}}}
_USAGE = {"type": "object", "required": ["senders", "external"], "properties": {
    "senders": {"type": "object", "additionalProperties": {"allOf": [_BUDGET, {"type": "object", "properties": {
        "address": {"type": "string"}, "requests": {"type": "object", "properties": {
            "used": _COUNT, "limit": _COUNT, "window_s": {"type": "number"}}}}}]}},
    "external": {"anyOf": [{"type": "null"}, _BUDGET]}}}
_NOTIFICATION = {"type": "object", "properties": {
    "id": {"type": "string"}, "state": {"enum": [s.value for s in State]}, "attempts": {},
    "to": {"type": "array", "items": {"type": "string"}}, "subject": {"type": "string"},
    "last_error_code": {"type": ["string", "null"]}, "graph_request_id": {"type": ["string", "null"]},
    "created_at": {"type": "string"}, "diagnosis": {"$ref": "#/components/schemas/Diagnosis"},
    "named_sender": {"type": "string"},
    "wait_reason": {"enum": [*(r.value for r in WaitReason), None],
                    "description": "why it waits: an open breaker, a Retry-After, a hold, its sender's spent budget"},
    "next_attempt_at": {"type": ["string", "null"], "description": "when a queued or waiting one goes next"}}}
_NULLABLE_TEXT = {"type": ["string", "null"]}
_ADDRESS = {"type": "string", "format": "idn-email", "maxLength": 254}
_RECIPIENT = {"anyOf": [_ADDRESS, {
    "type": "object", "additionalProperties": False, "required": ["address"],
    "properties": {"address": _ADDRESS, "name": {"type": ["string", "null"], "maxLength": 256}}}]}
_RECIPIENTS = {"type": ["array", "null"], "items": _RECIPIENT, "maxItems": 500}
_HEADER = {"type": "object", "additionalProperties": False, "required": ["name", "value"],
           "properties": {"name": {"type": "string", "maxLength": 64}, "value": {"type": "string", "maxLength": 900}}}
_HEADER_MAP = {"type": "object", "maxProperties": 4, "additionalProperties": {"type": "string"}}
_HEADER_LIST = {"type": "array", "maxItems": 4, "items": _HEADER}
_ATTACHMENT = {"type": "object", "additionalProperties": False, "required": ["name", "content_type", "content_bytes"],
               "properties": {"name": {"type": "string", "maxLength": 255},
                              "content_type": {"type": "string", "maxLength": 255},
                              "content_bytes": {"type": "string", "description": "base64; one of 3 MiB or more "
                                                "decoded goes through a Graph upload session (the tenant's app "
                                                "needs Mail.ReadWrite); smaller ones at most 3 MiB together; "
                                                "150 MB in all"},
                              "is_inline": {"type": ["boolean", "null"]}, "content_id": _NULLABLE_TEXT}}
_MESSAGE = {"type": "object", "additionalProperties": False,
            "description": "shared/message.py's message plus idempotency_key; at least one of to, cc, bcc; "
                           "1-500 recipients in all",
            "properties": {
                "to": _RECIPIENTS, "cc": _RECIPIENTS, "bcc": _RECIPIENTS,
                "reply_to": {"type": ["array", "null"], "items": _RECIPIENT, "maxItems": 10},
                "subject": {"type": ["string", "null"], "maxLength": 998}, "body": _NULLABLE_TEXT,
                "body_type": {"type": ["string", "null"], "description": "text or html (any case)"},
                "importance": {"type": ["string", "null"], "description": "low, normal or high (any case)"},
                "headers": {"anyOf": [{"type": "null"}, _HEADER_MAP, _HEADER_LIST]},
                "attachments": {"type": ["array", "null"], "maxItems": 100, "items": _ATTACHMENT},
                "sender": {"type": ["string", "null"], "description": "one of the tenant's named senders; "
                           "absent: default; a name the tenant does not have is 422"},
                "idempotency_key": {"type": ["string", "null"], "maxLength": 200}}}


_FILTER_TEXT = {"type": "string", "maxLength": 320}
_COUNT = {"type": "integer", "minimum": 0}
_LATENCY = {"type": ["number", "null"], "description": "seconds, nearest-rank, of the finished notifications"}
_SUMMARY_PROPS = {"enqueued": _COUNT, "sent": _COUNT, "failed": _COUNT, "ambiguous": _COUNT, "waiting": _COUNT,
                  "waiting_by_state": {"type": "object", "additionalProperties": _COUNT,
                                       "description": "queued, sending, retry_wait, held"},
                  "latency_p50_s": _LATENCY, "latency_p95_s": _LATENCY}
_SUMMARY = {"type": "object", "required": list(_SUMMARY_PROPS), "properties": _SUMMARY_PROPS}
_TIMESERIES = {"type": "object", "required": ["bucket", "since", "until", "series", "by_sender", "total"],
               "properties": {
                   "bucket": {"enum": ["1m", "1h"]}, "since": {"type": "string"}, "until": {"type": "string"},
                   "series": {"type": "array", "items": {"type": "object", "required": ["start", *_SUMMARY_PROPS],
                                                         "properties": {"start": {"type": "string"},
                                                                        **_SUMMARY_PROPS}}},
                   "by_sender": {"type": "array", "items": {"type": "object", "properties": {
                       "sender": {"type": ["string", "null"]}, **_SUMMARY_PROPS}}},
                   "by_tenant": {"type": "array", "description": "a platform viewer's answer across tenants",
                                 "items": {"type": "object", "properties": {"tenant_id": {"type": "string"},
                                                                            **_SUMMARY_PROPS}}},
                   "total": _SUMMARY}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _op(summary: str, ok: dict[str, Any], *, status: str = "200", body: dict[str, Any] | None = None,
        params: list[dict[str, Any]] | None = None, errors: tuple[str, ...] = ()) -> dict[str, Any]:
    """An operation; every one may answer 401 (no valid key) and 422 (a bad or unknown query parameter),
    one with a body also 400 (not JSON) and 413 (over the size limit)."""
    op: dict[str, Any] = {"summary": summary, "responses": {status: _json(ok, "success")}}
    codes = {"401", "422", *errors} | ({"400", "413"} if body is not None else set())
    for code in sorted(codes):
        op["responses"][code] = _json(_ref("Error"), _ERROR_MEANING[code])
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params:
        op["parameters"] = params
    return op


_ERROR_MEANING = {"400": "the body is not JSON", "401": "no valid API key", "403": "the key's role may not do this",
                  "404": "not found for the key's tenant", "413": "the body is over the size limit",
                  "412": "If-Match names a version that is no longer in force (`error.current_version`, ETag)",
                  "422": "a field or query parameter is invalid or unknown (`error.field` names it)",
                  "429": "rate-limited per tenant; see Retry-After"}


_ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_RESENT = {"type": "object", "required": ["id", "resent", "state"], "properties": {
    "id": {"type": "string"}, "resent": {"type": "boolean"}, "state": {"enum": [s.value for s in State]},
    "possible_duplicate": {"type": "boolean"}, "attempts": {"type": "integer"}}}


def _q(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


_IF_MATCH = {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string", "maxLength": 40},
             "description": "the ETag of the version edited (`\"v3\"`); 412 when another version is in force"}
_HISTORY = {"type": "object", "properties": {"items": {"type": "array", "items": {
    "type": "object", "properties": {
        "version": {"type": "integer"}, "action": {"enum": ["saved", "reverted", "restored"]},
        "changed_fields": {"type": "array", "items": {"type": "string"}}, "actor": {"type": ["string", "null"]},
        "at": {"type": ["string", "null"]}, "restored_from": {"type": ["integer", "null"]}}}}}}


def _versioned(op: dict[str, Any], *, if_match: bool = True) -> dict[str, Any]:
    """An operation answering the provider document with its ETag, taking If-Match."""
    if if_match:
        op["parameters"] = [*op.get("parameters", []), _IF_MATCH]
    op["responses"]["200"]["headers"] = {"ETag": {"schema": {"type": "string"}, "description": "the version"}}
    return op


_ACTIVITY_FILTERS = [
    _q("status", {"enum": [s.value for s in State]}), _q("error_code", _FILTER_TEXT),
    {**_q("recipient", _FILTER_TEXT), "description": "a to, cc or bcc address, exactly (case and surrounding "
                                                     "spaces aside)"},
    _q("since", {"type": "string", "format": "date-time"}), _q("until", {"type": "string", "format": "date-time"}),
    _q("possible_duplicate", {"type": "boolean"})]


def _csv_op() -> dict[str, Any]:
    op = _op("The notifications matching the filters as CSV, newest first, streamed", {}, params=_ACTIVITY_FILTERS)
    op["responses"]["200"] = {"description": "text/csv, a header line then one line per notification",
                              "content": {"text/csv": {"schema": {"type": "string"}}}}
    return op


def document() -> dict[str, Any]:
    """The OpenAPI document."""
    from api import openapi_webhooks  # issue 16's paths; imported here as it imports this module's helpers

    page = {"type": "object", "properties": {"items": {"type": "array", "items": _ref("Notification")},
                                             "next_cursor": {"type": ["string", "null"]}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "tenantmail API", "version": "1",
                 "description": "Tenant email provider settings, test sends, activity and producer endpoints. "
                                "The tenant always comes from the API key."},
        "servers": [{"url": "/"}],
        "security": [{"apiKey": []}],
        "paths": {
            "/v1/email-provider": {
                "get": _versioned(_op("The provider configuration in force", _ref("ProviderOut")), if_match=False),
                "put": _versioned(_op("Validate and save (admin)", _ref("ProviderOut"), body=_ref("ProviderIn"),
                                      errors=("403", "412"))),
                "delete": _versioned(_op("Revert to the platform default (admin)", _ref("ProviderOut"),
                                         errors=("403", "412"))),
            },
            "/v1/email-provider/history": {"get": _op("Configuration changes", _HISTORY)},
            "/v1/email-provider/history/{version}:restore": {"post": _versioned(_op(
                "Restore an older version, revalidated like a save (admin)", _ref("ProviderOut"),
                errors=("403", "404", "412"), params=[{"name": "version", "in": "path", "required": True,
                                                       "schema": {"type": "integer", "minimum": 1}}]))},
            "/v1/email-provider/setup": {"get": _op(
                "The setup guide for this tenant's app id, sender(s) and cloud (those in force unless given)",
                _ref("SetupGuide"), params=[
                    _q("client_id", {"type": "string", "format": "uuid"}),
                    {**_q("sender", {"type": "array", "items": _ADDRESS, "maxItems": 10}), "style": "form",
                     "explode": True},
                    _q("cloud", {"enum": sorted(CLOUDS)})])},
            "/v1/email-provider/usage": {"get": _op(
                "Exchange sending limits used per sender (rolling 24 h recipients, 10-minute requests) and the "
                "tenant's external budget", _USAGE)},
            "/v1/email-provider/test": {"post": _op(
                "Send a test message (admin, rate-limited)", _ref("TestResult"),
                body={"type": "object", "required": ["to"], "additionalProperties": False,
                      "properties": {"to": _ADDRESS, "sender": {
                          "type": ["string", "null"], "description": "the named sender to test; absent: default"}}},
                errors=("403", "429"))},
            "/v1/activity": {"get": _op("Notifications, newest first", page, params=[
                *_ACTIVITY_FILTERS, _q("cursor", {"type": "string"}),
                _q("limit", {"type": "integer", "minimum": 1, "maximum": 200})])},
            "/v1/activity/export": {"get": _csv_op()},
            "/v1/stats/timeseries": {"get": _op(
                "Per minute or hour, by enqueue time: sent, failed, ambiguous, waiting, p50/p95 latency; by sender. "
                "A platform_viewer key without X-Tenant-Id: across its tenants", _TIMESERIES, errors=("403",),
                params=[_q("bucket", {"enum": ["1m", "1h"]}), _q("since", {"type": "string", "format": "date-time"}),
                        _q("until", {"type": "string", "format": "date-time"}), _q("sender", _FILTER_TEXT)])},
            "/v1/events": {"get": _op("Config changes, credential check failures and test sends", {
                "type": "object", "properties": {"items": {"type": "array", "items": {"type": "object"}}}},
                params=[_q("limit", {"type": "integer", "minimum": 1, "maximum": 200})])},
            "/v1/stats": {"get": _op("Counts by status and error code", {"type": "object"}, params=[
                _q("window_s", {"type": "integer", "minimum": 1, "maximum": 90 * 86400})])},
            "/v1/notifications": {"post": _op("Enqueue a notification (sender, admin)", {
                "type": "object", "properties": {"id": {"type": "string"}}}, status="201", body=_ref("Message"),
                errors=("403", "429"))},
            "/v1/notifications:batch": {"post": _op("Enqueue up to 500 notifications, all or none", {
                "type": "object", "properties": {"ids": {"type": "array", "items": {"type": "string"}}}},
                status="201", errors=("403", "429"), body={
                    "type": "object", "required": ["items"], "additionalProperties": False,
                    "properties": {"items": {"type": "array", "items": _ref("Message"), "minItems": 1,
                                             "maxItems": 500}}})},
            "/v1/notifications/{id}": {"get": _op("One notification with its attempts", _ref("Notification"),
                                                  errors=("404",), params=[_ID_PARAM])},
            "/v1/notifications/{id}:retry": {"post": _op(
                "Resend a failed or ambiguous notification (admin); otherwise a no-op answering its state",
                _RESENT, errors=("403", "404"), params=[_ID_PARAM])},
            "/v1/notifications:retry": {"post": _op(
                "Resend the failed or ambiguous notifications matching the filters, newest first (admin)", {
                    "type": "object", "properties": {"resent": {"type": "integer"},
                                                     "ids": {"type": "array", "items": {"type": "string"}}}},
                errors=("403",), body={
                    "type": "object", "additionalProperties": False, "properties": {
                        "state": {"enum": ["failed", "ambiguous"]}, "error_code": _FILTER_TEXT,
                        "since": {"type": "string", "format": "date-time"},
                        "until": {"type": "string", "format": "date-time"},
                        "limit": {"type": "integer", "minimum": 1, "maximum": 1000}}})},
            **openapi_webhooks.paths(),
        },
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer", "description": "tm_<id>_<secret>"}},
            "schemas": {"Error": _ERROR, "Diagnosis": _DIAGNOSIS, "ProviderIn": {"anyOf": [_PLATFORM_IN, _PROVIDER_IN]},
                        "ProviderOut": _PROVIDER_OUT, "TestResult": _TEST_RESULT, "Notification": _NOTIFICATION,
                        "Message": _MESSAGE, "Sender": _SENDER, "DomainChecks": _DOMAIN_CHECKS,
                        "SetupGuide": _SETUP_GUIDE,
                        **openapi_webhooks.SCHEMAS},
        },
    }


async def handler(_request: web.Request) -> web.Response:
    """GET /v1/openapi.json."""
    return web.json_response(document())
