"""A notification message: validate a producer's dict, store it, and build the Graph sendMail body.

    producer dict ──parse_message──▶ Message ──message_to_dict──▶ DB (JSON)
                                        │
                                        └──graph_request_body──▶ bytes for POST /users/{id}/sendMail

`parse_message` is the only way in: it accepts only messages Graph accepts for their shape (§3.1 and
§3.4 of the Entra/Graph reference) and never lets a line break reach a header. Every rejection is a
`ValidationFailed` whose `field` is a dotted path (`to[3].address`, `headers.X-Foo`,
`attachments[0].content_bytes`); no other exception escapes, whatever the input.

Limits, all enforced by `parse_message` (the why in brackets):

- recipients in to + cc + bcc: 1 .. MAX_RECIPIENTS (500) distinct addresses (one named in two fields,
  or twice, counts once, as Exchange counts it) [Exchange Online default per message]; each list at most
  MAX_RECIPIENTS entries; reply_to: at most MAX_REPLY_TO (10) [Graph documents no limit; a sane bound].
- address: email_validator syntax with an ASCII local part, no quoting, no IP literal, at most 254
  characters; a domain in Unicode is stored in its ASCII (punycode) form [Graph rejects recipients
  it cannot resolve]. `.test` domains are accepted for test tenants.
- display name: at most MAX_NAME_CHARS (256); subject: at most MAX_SUBJECT_CHARS (998). Neither may
  hold control characters (C0, DEL, C1, U+2028, U+2029) or lone surrogates [header injection]. An
  empty name means no name.
- body: no C0 control characters except tab, CR and LF, no DEL, no lone surrogates; its length is
  bounded by the request size.
- header name: `X-[A-Za-z0-9-]+`, at most 64 characters, unique ignoring case, never
  X-Tenantmail-Notification-Id [Graph InvalidInternetMessageHeader]; value: 1 .. 900 printable
  ASCII characters [sent as a raw header line]; at most MAX_CUSTOM_HEADERS (4) [Graph allows 5 and
  we add one].
- attachments: at most MAX_ATTACHMENTS (100); content strict base64 (no whitespace, padded). One of
  UPLOAD_MIN_BYTES (3 MiB) or more decoded is *uploaded*: it goes through a draft and an upload session
  (Graph's large-attachment path, which needs Mail.ReadWrite; the producer checks the tenant's app has
  it) and is stored apart from the row (shared.attachments). The others are *inline*: decoded total at
  most MAX_ATTACHMENT_BYTES (3 MiB) [Graph's single-request path]. All together at most
  MAX_MESSAGE_BYTES (150 MB) [Exchange Online's largest message]; name 1 .. 255
  characters, no control characters, no `/` or `\\`, not `.` or `..`; content_type `type/subtype`
  with optional `; key=value` parameters.
- the whole sendMail (or draft) request, uploaded attachments left out: at most MAX_REQUEST_BYTES
  (4 MiB), sized with the longest sender name, address and notification id `graph_request_body` accepts
  [Graph answers 413 above it].

- sender: the name of one of the tenant's senders (shared.senders: 1-32 of a-z, 0-9, `_`, `-`,
  starting with a letter); absent means `default`. Whether the tenant has it is the producer's check.

`null` for an optional field means the field is absent.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson
from email_validator import EmailNotValidError, validate_email

from shared.errors import ValidationFailed
from shared.senders import DEFAULT_SENDER, check_sender_name

MAX_RECIPIENTS = 500
MAX_REPLY_TO = 10
MAX_REQUEST_BYTES = 4 * 1024 * 1024
MAX_ATTACHMENT_BYTES = 3 * 1024 * 1024
UPLOAD_MIN_BYTES = 3 * 1024 * 1024  # Graph takes 3 MB-150 MB through upload sessions; 3 MiB is over either 3 MB
MAX_MESSAGE_BYTES = 150_000_000
MAX_ATTACHMENTS = 100
MAX_CUSTOM_HEADERS = 4
MAX_ADDRESS_CHARS = 254
MAX_NAME_CHARS = 256
MAX_SUBJECT_CHARS = 998
MAX_HEADER_NAME_CHARS = 64
MAX_HEADER_VALUE_CHARS = 900
MAX_FILE_NAME_CHARS = 255
MAX_CONTENT_TYPE_CHARS = 255
MAX_CONTENT_ID_CHARS = 255
MAX_NOTIFICATION_ID_CHARS = 128
NOTIFICATION_ID_HEADER = "X-Tenantmail-Notification-Id"

BODY_TYPES = ("text", "html")
IMPORTANCES = ("low", "normal", "high")

_MESSAGE_KEYS = frozenset(
    {"to", "cc", "bcc", "reply_to", "subject", "body", "body_type", "headers", "attachments", "importance",
     "sender"}
)
_RECIPIENT_KEYS = frozenset({"address", "name"})
_HEADER_KEYS = frozenset({"name", "value"})
_ATTACHMENT_KEYS = frozenset({"name", "content_type", "content_bytes", "is_inline", "content_id"})

# Characters that could break or fake a header line: C0, DEL, C1, the Unicode line and paragraph
# separators; lone surrogates cannot be encoded as UTF-8 at all.
_LINE_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_BODY_UNSAFE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_HEADER_NAME = re.compile(r"[Xx]-[A-Za-z0-9-]+")
_HEADER_VALUE = re.compile(r"[\x20-\x7e]+")
_TOKEN = r"[A-Za-z0-9!#$&^_.+-]+"
_CONTENT_TYPE = re.compile(
    rf"{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|\"[\x20\x21\x23-\x5b\x5d-\x7e]*\"))*"
)
_CONTENT_ID = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@-]+")
_MAX_BASE64_CHARS = 4 * -(-MAX_MESSAGE_BYTES // 3)
# Graph's PidTagDeleteAfterSubmit: Exchange deletes a sent draft instead of moving it to Sent Items.
DELETE_AFTER_SUBMIT = {"id": "Boolean 0x0E01", "value": "true"}

# The request is sized with the longest sender and notification id graph_request_body accepts, each
# in the characters that cost the most JSON bytes (4 for an astral code point, 2 for an escaped quote).
_WORST_ADDRESS = "a" * MAX_ADDRESS_CHARS
_WORST_NAME = "\U0001f4e7" * MAX_NAME_CHARS
_WORST_NOTIFICATION_ID = '"' * MAX_NOTIFICATION_ID_CHARS


@dataclass(frozen=True, slots=True)
class Recipient:
    """One mailbox: an address and an optional display name."""

    address: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file attachment; `content_bytes` is the base64 text Graph expects.

    An uploaded attachment read back from a stored row has no content (`content_bytes` "") but its
    `stored_size`: its bytes are in the notification_attachment table (shared.attachments).
    """

    name: str
    content_type: str
    content_bytes: str
    is_inline: bool = False
    content_id: str | None = None
    stored_size: int | None = None

    @property
    def size_bytes(self) -> int:
        """The decoded size."""
        return self.stored_size if self.stored_size is not None else decoded_size(self.content_bytes)

    @property
    def uploaded(self) -> bool:
        """Whether it goes through an upload session rather than inside the request."""
        return self.size_bytes >= UPLOAD_MIN_BYTES


def decoded_size(text: str) -> int:
    """The decoded size of padded base64 text, without decoding it."""
    return len(text) // 4 * 3 - text[-2:].count("=") if text else 0


@dataclass(frozen=True, slots=True)
class Message:
    """A validated notification message; build it with `parse_message`."""

    to: tuple[Recipient, ...]
    cc: tuple[Recipient, ...] = ()
    bcc: tuple[Recipient, ...] = ()
    subject: str = ""
    body: str = ""
    body_type: str = "text"
    headers: tuple[tuple[str, str], ...] = ()
    attachments: tuple[Attachment, ...] = ()
    importance: str = "normal"
    reply_to: tuple[Recipient, ...] = ()
    sender: str = DEFAULT_SENDER  # which of the tenant's named senders (shared.senders) sends it


def parse_message(data: object) -> Message:
    """Validate a producer's message dict; raise `ValidationFailed` naming the first bad field."""
    if not isinstance(data, Mapping):
        raise ValidationFailed("message", "must be an object")
    _reject_unknown_keys(data, _MESSAGE_KEYS, "")
    to, cc, bcc = _all_recipients(data)
    attachments = _attachments(data.get("attachments"))
    message = Message(
        to=to,
        cc=cc,
        bcc=bcc,
        subject=_line(data.get("subject"), "subject", MAX_SUBJECT_CHARS) or "",
        body=_body(data.get("body")),
        body_type=_choice(data.get("body_type"), "body_type", BODY_TYPES, "text"),
        headers=_headers(data.get("headers")),
        attachments=attachments,
        importance=_choice(data.get("importance"), "importance", IMPORTANCES, "normal"),
        reply_to=_recipients(_sequence(data.get("reply_to"), "reply_to", MAX_REPLY_TO), "reply_to"),
        sender=DEFAULT_SENDER if data.get("sender") is None else check_sender_name(data.get("sender"), "sender"),
    )
    size = len(_render(message, _WORST_ADDRESS, _WORST_NAME, _WORST_ADDRESS, _WORST_NOTIFICATION_ID))
    if size > MAX_REQUEST_BYTES:
        raise ValidationFailed(
            "message", f"the Graph request would be {size} bytes, over {MAX_REQUEST_BYTES}"
        )
    return message


def message_from_stored(data: Mapping[str, Any]) -> Message:
    """Rebuild a message from `message_to_dict` output that this service validated and stored.

    No checks, for the send path: never call it on anything a producer sent (use `parse_message`).
    """
    def recipients(key: str) -> tuple[Recipient, ...]:
        return tuple(Recipient(r["address"], r.get("name")) for r in data.get(key) or ())

    return Message(
        to=recipients("to"), cc=recipients("cc"), bcc=recipients("bcc"), reply_to=recipients("reply_to"),
        subject=data.get("subject", ""), body=data.get("body", ""), body_type=data.get("body_type", "text"),
        importance=data.get("importance", "normal"), sender=data.get("sender", DEFAULT_SENDER),
        headers=tuple((h["name"], h["value"]) for h in data.get("headers") or ()),
        attachments=tuple(Attachment(a["name"], a["content_type"], a.get("content_bytes", ""),
                                     a.get("is_inline", False), a.get("content_id"), a.get("stored_size"))
                          for a in data.get("attachments") or ()),
    )


def uploaded_attachments(m: Message) -> tuple[tuple[int, Attachment], ...]:
    """The attachments that go through upload sessions, with their index among all attachments."""
    return tuple((i, a) for i, a in enumerate(m.attachments) if a.uploaded)


def message_to_dict(m: Message) -> dict[str, Any]:
    """A JSON-safe dict of `m`; `parse_message` of it gives back a message equal to `m`."""
    out: dict[str, Any] = {"to": [_recipient_dict(r) for r in m.to]}
    for key, recipients in (("cc", m.cc), ("bcc", m.bcc), ("reply_to", m.reply_to)):
        if recipients:
            out[key] = [_recipient_dict(r) for r in recipients]
    out.update(subject=m.subject, body=m.body, body_type=m.body_type, importance=m.importance)
    if m.headers:
        out["headers"] = [{"name": name, "value": value} for name, value in m.headers]
    if m.attachments:
        out["attachments"] = [_attachment_dict(a) for a in m.attachments]
    if m.sender != DEFAULT_SENDER:  # stored payloads of default-sender mail stay as they were
        out["sender"] = m.sender
    return out


def graph_request_body(
    m: Message, *, sender_address: str, sender_name: str | None, reply_to: str | None, notification_id: str,
    checked: bool = False, draft: bool = False,
) -> bytes:
    """JSON bytes for Graph `sendMail`: `{"message": {...}, "saveToSentItems": false}`; with `draft`, the
    message itself for `POST /users/{id}/messages`, marked to be deleted once sent (no Sent Items copy).
    Uploaded attachments are left out of both: they go through upload sessions.

    `m` is validated again (a hand-built Message gets the same checks as a producer's dict) unless
    `checked` says it came straight from `parse_message`; the sender, the default reply-to and the
    notification id, which ride in headers too, are always checked.
    """
    message = m if checked else parse_message(message_to_dict(m))
    sender = _address(sender_address, "sender_address")
    name = _line(sender_name, "sender_name", MAX_NAME_CHARS) or None
    default_reply_to = None if reply_to is None else _address(reply_to, "reply_to")
    notification = _header_value(notification_id, "notification_id", MAX_NOTIFICATION_ID_CHARS)
    body = _render(message, sender, name, default_reply_to, notification, draft=draft)
    if len(body) > MAX_REQUEST_BYTES:  # unreachable while parse_message sizes with the worst case
        raise ValidationFailed("message", f"the Graph request is {len(body)} bytes, over {MAX_REQUEST_BYTES}")
    return body


# --- Graph rendering -----------------------------------------------------------------------------


def _render(
    m: Message, sender: str, sender_name: str | None, reply_to: str | None, notification: str, *,
    draft: bool = False,
) -> bytes:
    message: dict[str, Any] = {
        "subject": m.subject,
        "body": {"contentType": "HTML" if m.body_type == "html" else "Text", "content": m.body},
        "from": _email_address(sender, sender_name),
        "importance": m.importance,
    }
    replies = m.reply_to or ((Recipient(reply_to),) if reply_to else ())
    for key, recipients in (
        ("toRecipients", m.to),
        ("ccRecipients", m.cc),
        ("bccRecipients", m.bcc),
        ("replyTo", replies),
    ):
        if recipients:
            message[key] = [_email_address(r.address, r.name) for r in recipients]
    headers = [{"name": name, "value": value} for name, value in m.headers]
    headers.append({"name": NOTIFICATION_ID_HEADER, "value": notification})
    message["internetMessageHeaders"] = headers
    if inline := [a for a in m.attachments if not a.uploaded]:
        message["attachments"] = [_graph_attachment(a) for a in inline]
    if draft:
        message["singleValueExtendedProperties"] = [DELETE_AFTER_SUBMIT]
        return orjson.dumps(message)
    return orjson.dumps({"message": message, "saveToSentItems": False})


def _email_address(address: str, name: str | None) -> dict[str, Any]:
    inner = {"address": address} if name is None else {"address": address, "name": name}
    return {"emailAddress": inner}


def _graph_attachment(a: Attachment) -> dict[str, Any]:
    out: dict[str, Any] = {
        "@odata.type": "#microsoft.graph.fileAttachment",
        "name": a.name,
        "contentType": a.content_type,
        "contentBytes": a.content_bytes,
        "isInline": a.is_inline,
    }
    if a.content_id is not None:
        out["contentId"] = a.content_id
    return out


def _recipient_dict(r: Recipient) -> dict[str, Any]:
    return {"address": r.address} if r.name is None else {"address": r.address, "name": r.name}


def _attachment_dict(a: Attachment) -> dict[str, Any]:
    out: dict[str, Any] = {"name": a.name, "content_type": a.content_type}
    if a.stored_size is None:
        out["content_bytes"] = a.content_bytes
    else:
        out["stored_size"] = a.stored_size
    out["is_inline"] = a.is_inline
    if a.content_id is not None:
        out["content_id"] = a.content_id
    return out


# --- field checks ----------------------------------------------------------------------------------


def _key(key: object) -> str:
    """A mapping key made safe to quote in a field path: short, printable ASCII."""
    if isinstance(key, str):
        if 0 < len(key) <= 64 and key.isascii() and key.isprintable():
            return key
        return ascii(key[:64])  # quoted and escaped, e.g. '' or 'X-\xdc'
    return f"<{type(key).__name__} key>"


def _reject_unknown_keys(data: Mapping[Any, Any], allowed: frozenset[str], prefix: str) -> None:
    for key in data:
        if not isinstance(key, str) or key not in allowed:
            raise ValidationFailed(prefix + _key(key), "unknown field")


def _sequence(value: object, field: str, max_items: int) -> list[Any] | tuple[Any, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise ValidationFailed(field, "must be a list")
    if len(value) > max_items:
        raise ValidationFailed(field, f"has {len(value)} items, more than {max_items}")
    return value


def _all_recipients(data: Mapping[Any, Any]) -> tuple[tuple[Recipient, ...], ...]:
    lists = tuple(_recipients(_sequence(data.get(f), f, MAX_RECIPIENTS), f) for f in ("to", "cc", "bcc"))
    unique = recipient_addresses(*lists)
    if len(unique) > MAX_RECIPIENTS:  # Exchange counts a recipient once, whichever fields name it
        field = next(f for f, items in zip(("bcc", "cc", "to"), lists[::-1], strict=True) if items)
        raise ValidationFailed(field, f"more than {MAX_RECIPIENTS} recipients in to, cc and bcc together")
    if not unique:
        raise ValidationFailed("to", "at least one recipient is required in to, cc or bcc")
    return lists


def recipient_addresses(*lists: Iterable[Recipient]) -> set[str]:
    """The distinct recipients of to, cc and bcc (addresses compared ignoring case): what Exchange's
    per-message and per-day recipient limits count."""
    return {r.address.lower() for items in lists for r in items}


def _recipients(items: list[Any] | tuple[Any, ...], field: str) -> tuple[Recipient, ...]:
    return tuple(_recipient(item, f"{field}[{i}]") for i, item in enumerate(items))


def _recipient(item: object, field: str) -> Recipient:
    if isinstance(item, str):
        return Recipient(_address(item, f"{field}.address"))
    if not isinstance(item, Mapping):
        raise ValidationFailed(field, "must be an address or an object with address and name")
    _reject_unknown_keys(item, _RECIPIENT_KEYS, f"{field}.")
    address = _address(item.get("address"), f"{field}.address")
    return Recipient(address, _line(item.get("name"), f"{field}.name", MAX_NAME_CHARS) or None)


def _address(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise ValidationFailed(field, "must be a string")
    if not value:
        raise ValidationFailed(field, "is required")
    if len(value) > MAX_ADDRESS_CHARS:
        raise ValidationFailed(field, f"is longer than {MAX_ADDRESS_CHARS} characters")
    address, reason = _canonical_address(value)
    if address is None:
        raise ValidationFailed(field, reason)
    return address


@lru_cache(maxsize=16384)
def _canonical_address(value: str) -> tuple[str | None, str]:
    """(address to send, "") or (None, reason); cached because email_validator costs ~20 us a call."""
    try:
        result = validate_email(
            value,
            check_deliverability=False,
            allow_smtputf8=False,
            allow_quoted_local=False,
            allow_domain_literal=False,
            allow_display_name=False,
            strict=True,
            test_environment=True,
        )
    except EmailNotValidError as exc:
        return None, f"is not a valid email address: {exc}"
    address = value if value.isascii() else result.ascii_email
    if address is None or len(address) > MAX_ADDRESS_CHARS:
        return None, f"is longer than {MAX_ADDRESS_CHARS} characters in ASCII form"
    return address, ""


def _line(value: object, field: str, max_chars: int) -> str | None:
    """A one-line text (name, subject): no control characters, so it cannot break a header."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationFailed(field, "must be a string")
    if len(value) > max_chars:
        raise ValidationFailed(field, f"is longer than {max_chars} characters")
    if _LINE_UNSAFE.search(value):
        raise ValidationFailed(field, "must not contain line breaks or other control characters")
    return value


def _body(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValidationFailed("body", "must be a string")
    if len(value) > MAX_REQUEST_BYTES:
        raise ValidationFailed("body", f"is longer than {MAX_REQUEST_BYTES} characters")
    if _BODY_UNSAFE.search(value):
        raise ValidationFailed("body", "must not contain control characters other than tab, CR and LF")
    return value


def _choice(value: object, field: str, choices: tuple[str, ...], default: str) -> str:
    if value is None:
        return default
    if isinstance(value, str) and len(value) <= 16 and value.lower() in choices:
        return value.lower()
    raise ValidationFailed(field, f"must be one of {', '.join(choices)}")


def _headers(value: object) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if isinstance(value, Mapping):
        if len(value) > MAX_CUSTOM_HEADERS:
            raise ValidationFailed("headers", f"has more than {MAX_CUSTOM_HEADERS} headers")
        pairs = list(value.items())
    elif isinstance(value, list | tuple):
        pairs = [
            _header_item(item, i) for i, item in enumerate(_sequence(value, "headers", MAX_CUSTOM_HEADERS))
        ]
    else:
        raise ValidationFailed("headers", "must be an object of name to value or a list of {name, value}")
    seen: set[str] = set()
    out = []
    for name, header_value in pairs:
        checked = _header_name(name, seen)
        out.append((checked, _header_value(header_value, f"headers.{checked}", MAX_HEADER_VALUE_CHARS)))
    return tuple(out)


def _header_item(item: object, index: int) -> tuple[object, object]:
    field = f"headers[{index}]"
    if not isinstance(item, Mapping):
        raise ValidationFailed(field, "must be an object with name and value")
    _reject_unknown_keys(item, _HEADER_KEYS, f"{field}.")
    if not isinstance(item.get("name"), str):
        raise ValidationFailed(f"{field}.name", "must be a string")
    return item["name"], item.get("value")


def _header_name(name: object, seen: set[str]) -> str:
    field = f"headers.{_key(name)}"
    if not isinstance(name, str):
        raise ValidationFailed(field, "header name must be a string")
    if len(name) > MAX_HEADER_NAME_CHARS or not _HEADER_NAME.fullmatch(name):
        raise ValidationFailed(
            field, f"header name must match X-[A-Za-z0-9-]+, at most {MAX_HEADER_NAME_CHARS}"
        )
    lowered = name.lower()
    if lowered == NOTIFICATION_ID_HEADER.lower():
        raise ValidationFailed(field, "header name is reserved for tenantmail")
    if lowered in seen:
        raise ValidationFailed(field, "header name is given twice (names are case-insensitive)")
    seen.add(lowered)
    return name


def _header_value(value: object, field: str, max_chars: int) -> str:
    if not isinstance(value, str):
        raise ValidationFailed(field, "must be a string")
    if len(value) > max_chars:
        raise ValidationFailed(field, f"is longer than {max_chars} characters")
    if not _HEADER_VALUE.fullmatch(value):
        raise ValidationFailed(field, "must be 1 or more printable ASCII characters (no CR, LF or controls)")
    return value


def _attachments(value: object) -> tuple[Attachment, ...]:
    items = _sequence(value, "attachments", MAX_ATTACHMENTS)
    out = []
    inline_bytes = total_bytes = 0
    for i, item in enumerate(items):
        attachment, size = _attachment(item, f"attachments[{i}]")
        total_bytes += size
        inline_bytes += 0 if size >= UPLOAD_MIN_BYTES else size
        if inline_bytes > MAX_ATTACHMENT_BYTES:
            raise ValidationFailed(
                f"attachments[{i}].content_bytes",
                f"attachments under {UPLOAD_MIN_BYTES} bytes each add up to {inline_bytes} bytes decoded, over "
                f"{MAX_ATTACHMENT_BYTES} (attachments of {UPLOAD_MIN_BYTES} bytes or more are uploaded apart)",
            )
        if total_bytes > MAX_MESSAGE_BYTES:
            raise ValidationFailed(f"attachments[{i}].content_bytes",
                                   f"attachments add up to {total_bytes} bytes decoded, over {MAX_MESSAGE_BYTES}")
        out.append(attachment)
    return tuple(out)


def _attachment(item: object, field: str) -> tuple[Attachment, int]:
    if not isinstance(item, Mapping):
        raise ValidationFailed(field, "must be an object")
    _reject_unknown_keys(item, _ATTACHMENT_KEYS, f"{field}.")
    content, size = _base64(item.get("content_bytes"), f"{field}.content_bytes")
    is_inline = item.get("is_inline")
    if is_inline is not None and not isinstance(is_inline, bool):
        raise ValidationFailed(f"{field}.is_inline", "must be true or false")
    attachment = Attachment(
        name=_file_name(item.get("name"), f"{field}.name"),
        content_type=_token(
            item.get("content_type"), f"{field}.content_type", _CONTENT_TYPE, MAX_CONTENT_TYPE_CHARS
        ),
        content_bytes=content,
        is_inline=bool(is_inline),
        content_id=(
            None
            if item.get("content_id") is None
            else _token(item["content_id"], f"{field}.content_id", _CONTENT_ID, MAX_CONTENT_ID_CHARS)
        ),
    )
    return attachment, size


def _file_name(value: object, field: str) -> str:
    name = _line(value, field, MAX_FILE_NAME_CHARS)
    if not name:
        raise ValidationFailed(field, "is required")
    if "/" in name or "\\" in name or name in (".", ".."):
        raise ValidationFailed(field, "must be a file name, not a path")
    return name


def _token(value: object, field: str, pattern: re.Pattern[str], max_chars: int) -> str:
    if not isinstance(value, str):
        raise ValidationFailed(field, "must be a string")
    if len(value) > max_chars or not pattern.fullmatch(value):
        raise ValidationFailed(field, f"is not well formed (at most {max_chars} characters)")
    return value


def _base64(value: object, field: str) -> tuple[str, int]:
    """(the base64 text, its decoded size); strict: no whitespace, padding required."""
    if not isinstance(value, str):
        raise ValidationFailed(field, "must be a base64 string")
    if len(value) > _MAX_BASE64_CHARS:
        raise ValidationFailed(field, f"decodes to more than {MAX_MESSAGE_BYTES} bytes")
    # b64decode(validate=True) still accepts excess padding ("YWJj===="); padding only at the end.
    if not value.isascii() or len(value) % 4 or "=" in value[:-2]:
        raise ValidationFailed(field, "is not valid base64")
    try:
        decoded = base64.b64decode(value, validate=True)
    except binascii.Error:
        raise ValidationFailed(field, "is not valid base64") from None
    return value, len(decoded)


def check_address(value: object, field: str) -> str:
    """A single email address, validated as recipients are; raises `ValidationFailed` naming `field`."""
    return _address(value, field)


def check_line(value: object, field: str, max_chars: int) -> str | None:
    """Optional one-line text without control characters (CR/LF included); `ValidationFailed` otherwise."""
    return _line(value, field, max_chars)
