"""Graph's large-attachment routes: drafts, upload sessions, chunked upload, a draft's send and delete.

    POST   /v1.0/users/{user}/messages                                  draft (Mail.ReadWrite)        → 201
    POST   /v1.0/users/{user}/messages/{id}/attachments/createUploadSession                            → 201
    PUT    /api/v2.0/Users('{user}')/Messages('{id}')/AttachmentSessions('{sid}')?authtoken=…      → 200 / 201
    GET    the same URL: nextExpectedRanges of an upload in progress                                  → 200
    POST   /v1.0/users/{user}/messages/{id}/send                        (Mail.Send)                   → 202
    DELETE /v1.0/users/{user}/messages/{id}                             (Mail.ReadWrite)              → 204

Checks follow Microsoft's "Attach large files to Outlook messages" page: an upload PUT carries no
Authorization header (the URL's authtoken authenticates it), its Content-Range must start at the next
expected byte, and the last chunk answers 201. Every upload byte counts against the (app, mailbox)
volume limit (150 MB per 5 minutes: 429 ApplicationThrottled "IncomingBytes" with a Retry-After).
A sent draft goes to the outbox like a sendMail, with each attachment's size and SHA-256; it then stays
in the mailbox's Sent Items unless it carried PidTagDeleteAfterSubmit (`mail_items` shows what is left).
Faults are injected per route: draft, uploadSession, uploadChunk, sendDraft, deleteMessage.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from emulator.directory import Mailbox, Tenant
from emulator.graph import GraphReply, authorize_send, caller, commit
from emulator.graph_errors import base_headers, graph_date, graph_error
from emulator.message_checks import MessageProblem, check_message
from emulator.wire import EMULATOR_KEY, NOTE_KEY, abort_connection, wait_for_fault

if TYPE_CHECKING:
    from emulator.server import Emulator

READWRITE = "Mail.ReadWrite"
_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_FAULT_PROBLEMS = {"429": "too_many_requests", "503": "service_unavailable", "500": "internal_error",
                   "504": "gateway_timeout", "status": "internal_error"}


@dataclass
class Draft:
    """A message in a mailbox: a draft until sent; a Sent Items copy after, unless deleted on submit."""

    id: str
    tenant_id: str
    mailbox: str
    message: dict[str, Any]
    delete_after_submit: bool
    size_bytes: int
    attachments: list[dict[str, Any]] = field(default_factory=list)
    folder: str = "drafts"

    def public(self) -> dict[str, Any]:
        """JSON view for the control API."""
        return {"id": self.id, "tenant_id": self.tenant_id, "mailbox": self.mailbox, "folder": self.folder,
                "subject": self.message.get("subject"), "size_bytes": self.size_bytes,
                "attachments": self.attachments, "delete_after_submit": self.delete_after_submit}


@dataclass
class UploadSession:
    """One attachment being uploaded into a draft."""

    id: str
    draft: Draft
    app_id: str
    item: dict[str, Any]
    size: int
    token: str
    expires_at: float
    received: bytearray = field(default_factory=bytearray)


class MailItems:
    """Drafts, Sent Items copies and upload sessions of every mailbox (reset with the emulator)."""

    def __init__(self) -> None:
        self.items: dict[str, Draft] = {}
        self.sessions: dict[str, UploadSession] = {}


def _reply(emu: Emulator, request: web.Request, reply: GraphReply) -> web.Response:
    note = request[NOTE_KEY]
    emu.inspection.counters.send_errors[reply.problem] += 1
    return graph_error(reply.problem, request_id=note["request_id"], client_request_id=note["client_request_id"],
                       now=emu.clock.now(), **reply.fields)


def _begin(emu: Emulator, request: web.Request) -> tuple[str, str]:
    request_id = emu.ids.new()
    client_request_id = request.headers.get("client-request-id") or request_id
    request[NOTE_KEY].update(request_id=request_id, client_request_id=client_request_id)
    return request_id, client_request_id


def authorize_readwrite(emu: Emulator, roles: list[str], tenant: Tenant | None, app_id: str,
                        box: Mailbox | None) -> None:
    """Mail.ReadWrite (drafts, upload sessions, deletes), consented in Entra ID."""
    if READWRITE not in roles:
        raise GraphReply("access_denied")


def _draft_call(emu: Emulator, request: web.Request, authorize: Any) -> tuple[Tenant, Mailbox, str, Draft]:
    """The caller (as sendMail checks it) and the draft named in the path, in its mailbox."""
    tenant, box, app_id = caller(emu, request, authorize)
    return tenant, box, app_id, _draft_of(emu, request, box)


def _draft_of(emu: Emulator, request: web.Request, box: Mailbox) -> Draft:
    draft = emu.mail.items.get(request.match_info["message"])
    if draft is None or draft.mailbox != box.address:
        raise GraphReply("item_not_found")
    return draft


async def _json_body(emu: Emulator, request: web.Request) -> tuple[Any, int]:
    raw = await request.read()
    if len(raw) > emu.config.max_request_bytes:
        raise GraphReply("request_too_large", status=emu.config.request_too_large_status)
    try:
        return orjson.loads(raw), len(raw)
    except orjson.JSONDecodeError:
        raise GraphReply("bad_json") from None


async def _fault(emu: Emulator, request: web.Request, route: str, tenant: Tenant, box: Mailbox,
                 app_id: str) -> web.Response | str | None:
    """A matching fault's response (a reset, an error), "after_commit" when the step is to happen first,
    or None; latency and hold gates are applied here."""
    hit = emu.faults.match(route, {tenant.id, *tenant.domains}, {box.address, box.id}, app_id)
    await wait_for_fault(hit, emu.config.latency_ms / 1000.0)
    fault = hit.fault
    if fault is None:
        return None
    emu.inspection.counters.faults_injected += 1
    if fault.kind.endswith("after_commit"):
        return "after_commit"
    if fault.kind == "reset":
        emu.inspection.counters.reset_connections += 1
        return abort_connection(request)
    note = request[NOTE_KEY]
    return graph_error(_FAULT_PROBLEMS.get(fault.kind, "internal_error"), request_id=note["request_id"],
                       client_request_id=note["client_request_id"], now=emu.clock.now(), status=fault.status,
                       code=fault.code, message=fault.message,
                       retry_after=fault.retry_after if fault.kind == "429" else None)  # type: ignore[arg-type]


def _after_commit(request: web.Request, response: web.Response, faulted: web.Response | str | None) -> web.Response:
    if faulted == "after_commit":  # the step happened; the client never hears of it
        return abort_connection(request)
    return response


async def create_draft(request: web.Request) -> web.Response:
    """POST /v1.0/users/{user}/messages."""
    emu: Emulator = request.app[EMULATOR_KEY]
    request_id, client_request_id = _begin(emu, request)
    try:
        tenant, box, app_id = caller(emu, request, authorize_readwrite)
        body, size = await _json_body(emu, request)
        if not isinstance(body, dict):
            raise GraphReply("bad_json")
        if (retry_after := emu.limits.add_upload((app_id, box.address), size)) is not None:
            return _volume(emu, request, retry_after)
        faulted = await _fault(emu, request, "draft", tenant, box, app_id)
        if isinstance(faulted, web.Response):
            return faulted
    except GraphReply as reply:
        return _reply(emu, request, reply)
    draft = Draft(id="AAMk" + emu.ids.new().replace("-", ""), tenant_id=tenant.id, mailbox=box.address,
                  message=body, delete_after_submit=_deletes_after_submit(body), size_bytes=size,
                  attachments=[_inline(a) for a in body.get("attachments") or () if isinstance(a, dict)])
    emu.mail.items[draft.id] = draft
    request[NOTE_KEY]["draft_id"] = draft.id
    response = web.json_response({"id": draft.id, "isDraft": True, "subject": body.get("subject")}, status=201,
                                 headers=base_headers(request_id, client_request_id))
    return _after_commit(request, response, faulted)


def _deletes_after_submit(message: dict[str, Any]) -> bool:
    return any(isinstance(p, dict) and str(p.get("id", "")).lower() == "boolean 0x0e01"
               and str(p.get("value", "")).lower() == "true"
               for p in message.get("singleValueExtendedProperties") or ())


def _inline(attachment: dict[str, Any]) -> dict[str, Any]:
    content = base64.b64decode(str(attachment.get("contentBytes") or ""))
    return {"name": attachment.get("name"), "size": len(content), "sha256": hashlib.sha256(content).hexdigest(),
            "uploaded": False}


async def create_upload_session(request: web.Request) -> web.Response:
    """POST /v1.0/users/{user}/messages/{message}/attachments/createUploadSession."""
    emu: Emulator = request.app[EMULATOR_KEY]
    request_id, client_request_id = _begin(emu, request)
    try:
        tenant, box, app_id, draft = _draft_call(emu, request, authorize_readwrite)
        body, _ = await _json_body(emu, request)
        item = body.get("AttachmentItem") if isinstance(body, dict) else None
        if not isinstance(item, dict) or item.get("attachmentType") != "file" or not item.get("name") \
                or not isinstance(item.get("size"), int):
            raise GraphReply("invalid_upload", reason="AttachmentItem needs attachmentType file, a name and a size")
        if item["size"] < emu.config.upload_min_bytes:
            raise GraphReply("attachment_too_small", limit=emu.config.upload_min_bytes)
        if draft.size_bytes + item["size"] > box.max_send_size_bytes:
            raise GraphReply("message_too_big")
        faulted = await _fault(emu, request, "uploadSession", tenant, box, app_id)
        if isinstance(faulted, web.Response):
            return faulted
    except GraphReply as reply:
        return _reply(emu, request, reply)
    session = UploadSession(id=emu.ids.new(), draft=draft, app_id=app_id, item=item, size=item["size"],
                            token=secrets.token_urlsafe(24),
                            expires_at=emu.clock.now() + emu.config.upload_session_ttl_s)
    emu.mail.sessions[session.id] = session
    base = emu.config.advertised_base_url or emu.base_url
    url = (f"{base}/api/v2.0/Users('{box.id}')/Messages('{draft.id}')/AttachmentSessions('{session.id}')"
           f"?authtoken={session.token}")
    response = web.json_response({"uploadUrl": url, "expirationDateTime": _iso(emu, session.expires_at),
                                  "nextExpectedRanges": ["0-"]}, status=201,
                                 headers=base_headers(request_id, client_request_id))
    return _after_commit(request, response, faulted)


def _iso(emu: Emulator, at: float) -> str:
    return graph_date(at) + "Z"


def _session(emu: Emulator, request: web.Request) -> UploadSession:
    session = emu.mail.sessions.get(request.match_info["session"])
    if session is None or session.expires_at <= emu.clock.now():
        emu.mail.sessions.pop(request.match_info["session"], None)
        raise GraphReply("item_not_found")
    if not secrets.compare_digest(request.query.get("authtoken", ""), session.token):
        raise GraphReply("upload_token", reason="The upload URL's authtoken is missing or wrong.")
    if emu.config.upload_rejects_authorization and "Authorization" in request.headers:
        raise GraphReply("upload_token", reason="An upload URL is pre-authenticated: send no Authorization header.")
    request[NOTE_KEY].update(mailbox=session.draft.mailbox, app_id=session.app_id, tenant=session.draft.tenant_id)
    return session


async def upload_status(request: web.Request) -> web.Response:
    """GET the upload URL: where an interrupted upload goes on."""
    emu: Emulator = request.app[EMULATOR_KEY]
    request_id, client_request_id = _begin(emu, request)
    try:
        session = _session(emu, request)
    except GraphReply as reply:
        return _reply(emu, request, reply)
    return web.json_response(_progress(emu, session), headers=base_headers(request_id, client_request_id))


def _progress(emu: Emulator, session: UploadSession) -> dict[str, Any]:
    return {"expirationDateTime": _iso(emu, session.expires_at), "nextExpectedRanges": [f"{len(session.received)}-"]}


async def upload_chunk(request: web.Request) -> web.Response:
    """PUT a chunk to the upload URL."""
    emu: Emulator = request.app[EMULATOR_KEY]
    request_id, client_request_id = _begin(emu, request)
    counters = emu.inspection.counters
    counters.upload_requests += 1
    try:
        session = _session(emu, request)
        chunk = await request.read()
        start = _checked_range(emu, request, session, len(chunk))
    except GraphReply as reply:
        return _reply(emu, request, reply)
    key = (session.app_id, session.draft.mailbox)
    tenant = emu.directory.tenant(session.draft.tenant_id)
    box = tenant.mailbox(session.draft.mailbox) if tenant is not None else None
    if tenant is None or box is None:
        return _reply(emu, request, GraphReply("item_not_found"))
    if (refused := emu.limits.enter(key)) is not None:
        emu.limits.note_retry_after(key, refused[1])
        counters.throttled_429 += 1
        return graph_error(refused[0], request_id=request_id, client_request_id=client_request_id,
                           now=emu.clock.now(), retry_after=refused[1])
    try:
        if (retry_after := emu.limits.add_upload(key, len(chunk))) is not None:
            return _volume(emu, request, retry_after)
        faulted = await _fault(emu, request, "uploadChunk", tenant, box, session.app_id)
        if isinstance(faulted, web.Response):
            return faulted
        if start != len(session.received):  # a chunk that arrived meanwhile (held by a latency fault)
            return _reply(emu, request, GraphReply("range_not_satisfiable"))
        session.received += chunk
        counters.upload_bytes += len(chunk)
        return _after_commit(request, _stored_chunk(emu, session, request_id, client_request_id), faulted)
    finally:
        emu.limits.leave(key)


def _checked_range(emu: Emulator, request: web.Request, session: UploadSession, length: int) -> int:
    match = _RANGE.fullmatch(request.headers.get("Content-Range", ""))
    if match is None:
        raise GraphReply("invalid_upload", reason="Content-Range must be 'bytes first-last/total'.")
    first, last, total = (int(g) for g in match.groups())
    if total != session.size or last < first or last >= total:
        raise GraphReply("invalid_upload", reason=f"Content-Range {first}-{last}/{total} does not fit the session "
                                                  f"of {session.size} bytes.")
    if last - first + 1 != length:
        raise GraphReply("invalid_upload",
                         reason=f"Content-Range says {last - first + 1} bytes, the body has {length}.")
    if length > emu.config.upload_max_chunk_bytes:
        raise GraphReply("invalid_upload", reason=f"a chunk must be at most {emu.config.upload_max_chunk_bytes} bytes.")
    if first != len(session.received):
        raise GraphReply("range_not_satisfiable")
    return first


def _stored_chunk(emu: Emulator, session: UploadSession, request_id: str, client_request_id: str) -> web.Response:
    headers = base_headers(request_id, client_request_id)
    if len(session.received) < session.size:
        return web.json_response(_progress(emu, session), headers=headers)
    content = bytes(session.received)
    draft = session.draft
    draft.attachments.append({"name": session.item.get("name"), "size": len(content),
                              "sha256": hashlib.sha256(content).hexdigest(), "uploaded": True,
                              "contentType": session.item.get("contentType")})
    draft.size_bytes += len(content)
    del emu.mail.sessions[session.id]
    headers["Location"] = f"https://graph.microsoft.com/v1.0/users/{draft.mailbox}/messages/{draft.id}/attachments"
    return web.Response(status=201, headers=headers)


def _volume(emu: Emulator, request: web.Request, retry_after: str) -> web.Response:
    note = request[NOTE_KEY]
    counters = emu.inspection.counters
    counters.throttled_429 += 1
    counters.throttled_by_reason["upload_volume"] += 1
    return graph_error("upload_volume", request_id=note["request_id"], client_request_id=note["client_request_id"],
                       now=emu.clock.now(), retry_after=retry_after)


async def send_draft(request: web.Request) -> web.Response:
    """POST /v1.0/users/{user}/messages/{message}/send."""
    emu: Emulator = request.app[EMULATOR_KEY]
    request_id, client_request_id = _begin(emu, request)
    emu.inspection.counters.send_requests += 1
    try:
        tenant, box, app_id, draft = _draft_call(emu, request, authorize_send)
        if draft.folder != "drafts":
            raise GraphReply("item_not_found")
        message = {k: v for k, v in draft.message.items() if k not in ("attachments", "singleValueExtendedProperties")}
        checked = check_message({"message": message, "saveToSentItems": False}, emu.config.max_internet_headers)
        if draft.size_bytes > box.max_send_size_bytes:
            raise GraphReply("message_too_big")
        if checked.from_address and not tenant.may_send_as(box, checked.from_address):
            raise GraphReply("send_as_denied")
        faulted = await _fault(emu, request, "sendDraft", tenant, box, app_id)
        if isinstance(faulted, web.Response):
            return faulted
    except MessageProblem as problem:
        return _reply(emu, request, GraphReply(problem.problem, **problem.fields))
    except GraphReply as reply:
        return _reply(emu, request, reply)
    record = {"message": message, "save_to_sent_items": not draft.delete_after_submit, "x_headers": checked.x_headers,
              "recipients": len({a.lower() for a in checked.recipients}), "recipient_addresses": checked.recipients,
              "from": checked.from_address or box.address, "size_bytes": draft.size_bytes,
              "attachments": draft.attachments, "draft_id": draft.id}
    commit(emu, tenant, box, app_id, record, request_id, client_request_id)
    emu.inspection.counters.accepted += 1
    if draft.delete_after_submit:
        del emu.mail.items[draft.id]
    else:
        draft.folder = "sentitems"
    return _after_commit(request, web.Response(status=202, headers=base_headers(request_id, client_request_id)),
                         faulted)


async def delete_message(request: web.Request) -> web.Response:
    """DELETE /v1.0/users/{user}/messages/{message}."""
    emu: Emulator = request.app[EMULATOR_KEY]
    request_id, client_request_id = _begin(emu, request)
    try:
        tenant, box, app_id, draft = _draft_call(emu, request, authorize_readwrite)
        faulted = await _fault(emu, request, "deleteMessage", tenant, box, app_id)
        if isinstance(faulted, web.Response):
            return faulted
    except GraphReply as reply:
        return _reply(emu, request, reply)
    del emu.mail.items[draft.id]
    for sid in [s.id for s in emu.mail.sessions.values() if s.draft is draft]:
        del emu.mail.sessions[sid]
    return _after_commit(request, web.Response(status=204, headers=base_headers(request_id, client_request_id)),
                         faulted)


def add_routes(app: web.Application) -> None:
    """Mount the draft and upload routes."""
    r = app.router
    r.add_post("/v1.0/users/{user}/messages", create_draft)
    r.add_post("/v1.0/users/{user}/messages/{message}/attachments/createUploadSession", create_upload_session)
    r.add_post("/v1.0/users/{user}/messages/{message}/send", send_draft)
    r.add_delete("/v1.0/users/{user}/messages/{message}", delete_message)
    upload = "/api/v2.0/Users('{user}')/Messages('{message}')/AttachmentSessions('{session}')"
    r.add_put(upload, upload_chunk)
    r.add_get(upload, upload_status)


def route_name(method: str, path: str) -> str | None:
    """The fault route (and request log route) of a draft or upload request; None for other paths."""
    if "/AttachmentSessions(" in path:
        return "uploadChunk"
    if "/messages" not in path or "/users/" not in path:
        return None
    if path.endswith("/createUploadSession"):
        return "uploadSession"
    if path.endswith("/send"):
        return "sendDraft"
    return "deleteMessage" if method == "DELETE" else "draft"
