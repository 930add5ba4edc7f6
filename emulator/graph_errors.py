"""The Graph sendMail error catalogue (reference §3.4) and the response envelope."""

from __future__ import annotations

import datetime as dt
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

ODATA_JSON = (
    "application/json; odata.metadata=minimal; odata.streaming=true; IEEE754Compatible=false; charset=utf-8"
)
WWW_AUTHENTICATE = (
    'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", '
    'client_id="00000003-0000-0000-c000-000000000000"'
)
AGS_DIAGNOSTIC = (
    '{"ServerInfo":{"DataCenter":"Emulator","Slice":"E","Ring":"0","ScaleUnit":"000","RoleInstance":"EMU0"}}'
)

# problem key -> (status, code, message template)
CATALOGUE: dict[str, tuple[int, str, str]] = {
    "token_empty": (401, "InvalidAuthenticationToken", "Access token is empty."),
    "token_expired": (401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid."),
    "token_malformed": (
        401,
        "InvalidAuthenticationToken",
        "CompactToken parsing failed with error code: 80049217",
    ),
    "token_invalid": (401, "InvalidAuthenticationToken", "Access token validation failure."),
    "token_audience": (
        401,
        "InvalidAuthenticationToken",
        "Access token validation failure. Invalid audience.",
    ),
    "access_denied": (403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."),
    # UNVERIFIED status (reference §7 item 10); used when EmulatorConfig.no_permissions_in_token is on.
    "no_permissions": (
        401,
        "NoPermissionsInAccessToken",
        "The token contains no permissions, or permissions can not be understood.",
    ),
    "access_policy": (
        403,
        "ErrorAccessDenied",
        "Access to OData is disabled: [RAOP] : Blocked by tenant configured AppOnly AccessPolicy settings.",
    ),
    "invalid_user": (404, "ErrorInvalidUser", "The requested user '{user}' is invalid."),
    "mailbox_not_enabled": (
        404,
        "MailboxNotEnabledForRESTAPI",
        "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
    ),
    # UNVERIFIED body for 413 (reference §7 item 7); status from EmulatorConfig.request_too_large_status.
    "request_too_large": (413, "RequestEntityTooLarge", "The maximum request length supported is 4MB."),
    "bad_json": (
        400,
        "BadRequest",
        "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of "
        "valid "
        "JSON format.",
    ),
    "no_message": (400, "ErrorInvalidRequest", "The message is missing from the request body."),
    "no_recipients": (
        400,
        "ErrorInvalidRecipients",
        "At least one recipient is not valid., A message can't be sent because it contains no recipients.",
    ),
    "unresolved_recipient": (
        400,
        "ErrorInvalidRecipients",
        "At least one recipient is not valid., Recipient '{address}' is not resolved. All recipients must be "
        "resolved before a message can be submitted.",
    ),
    "bad_header_name": (
        400,
        "InvalidInternetMessageHeader",
        "The internet message header name '{name}' should start with 'x-' or 'X-'.",
    ),
    # UNVERIFIED code and text (reference §7 item 9).
    "bad_header_collection": (
        400,
        "InvalidInternetMessageHeaderCollection",
        "The number of internet message headers must be between 1 and {limit}.",
    ),
    "message_too_big": (400, "ErrorMessageSizeExceeded", "The message exceeds the maximum supported size."),
    "send_as_denied": (
        403,
        "ErrorSendAsDenied",
        "The user account which was used to submit this request does not have the right to send mail on "
        "behalf "
        "of the specified sending account. Cannot submit message.",
    ),
    "mailbox_concurrency": (429, "ApplicationThrottled", "Application is over its MailboxConcurrency limit."),
    # UNVERIFIED text for the 10,000 requests / 10 minutes limit.
    "request_rate": (429, "ApplicationThrottled", "Application is over its MailboxRequestRate limit."),
    "too_many_requests": (429, "TooManyRequests", "Please retry again later."),
    "service_unavailable": (503, "ServiceUnavailable", "Service unavailable; please retry later."),
    "mailbox_info_stale": (
        503,
        "MailboxInfoStale",
        "Target resource '{user}' hosted on database 'DB01' is currently on backend 'Unknown'",
    ),
    "gateway_timeout": (504, "UnknownError", ""),
    # Directory (applications, servicePrincipals) answers, not Outlook's.
    "directory_denied": (403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation."),
    "directory_not_found": (
        404,
        "Request_ResourceNotFound",
        "Resource '{ident}' does not exist or one of its queried reference-property objects are not present.",
    ),
    "internal_error": (500, "InternalServerError", "An internal server error occurred."),
    # Large attachments (emulator.drafts). The volume 429 is observed (reference §3.4); the other codes and
    # texts are UNVERIFIED.
    "upload_volume": (429, "ApplicationThrottled", "Application is over its IncomingBytes limit."),
    "item_not_found": (404, "ErrorItemNotFound", "The specified object was not found in the store."),
    "attachment_too_small": (400, "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize",
                             "Attachment size should not be less than the minimum size of {limit} bytes."),
    "invalid_upload": (400, "ErrorInvalidRequest", "{reason}"),
    "range_not_satisfiable": (416, "ErrorInvalidRange", "The Content-Range does not match the next expected range."),
    "upload_token": (401, "InvalidAuthenticationToken", "{reason}"),
}

HTML_ERROR = (
    "<!DOCTYPE html><html><head><title>{status} {reason}</title></head><body><h1>{status} {reason}</h1>"
    "<p>The service is temporarily unavailable. Please try again later.</p></body></html>"
)


def graph_date(now: float) -> str:
    """innerError.date: ISO without a zone suffix."""
    return dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def base_headers(request_id: str, client_request_id: str) -> dict[str, str]:
    """Headers Graph puts on every response."""
    return {
        "request-id": request_id,
        "client-request-id": client_request_id,
        "x-ms-ags-diagnostic": AGS_DIAGNOSTIC,
        "Strict-Transport-Security": "max-age=31536000",
    }


def graph_error(
    problem: str,
    *,
    request_id: str,
    client_request_id: str,
    now: float,
    status: int | None = None,
    code: str | None = None,
    message: str | None = None,
    retry_after: str | None = None,
    html: bool = False,
    **fields: Any,
) -> web.Response:
    """A Graph error response for a catalogue entry (status/code/message overridable)."""
    default_status, default_code, template = CATALOGUE[problem]
    status = status or default_status
    headers = base_headers(request_id, client_request_id)
    if status == 401:
        headers["WWW-Authenticate"] = WWW_AUTHENTICATE
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    if html:
        reason = _reason(status)
        return web.Response(
            status=status,
            headers=headers,
            content_type="text/html",
            text=HTML_ERROR.format(status=status, reason=reason),
        )
    inner: dict[str, Any] = {
        "date": graph_date(now),
        "request-id": request_id,
        "client-request-id": client_request_id,
    }
    if status == 429 and (code or default_code) == "TooManyRequests":
        inner.update({"code": "429", "message": "Please retry after", "status": "429"})
    body = {
        "error": {
            "code": code or default_code,
            "message": message or template.format(**fields),
            "innerError": inner,
        }
    }
    headers["Content-Type"] = ODATA_JSON
    return web.Response(status=status, headers=headers, body=orjson.dumps(body))


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
