"""A stored notification as an RFC 5322 message, for the platform default's SMTP relay.

The same Message that becomes a Graph sendMail body becomes MIME here: From is the platform's
no-reply sender, Bcc recipients ride only in the envelope, custom X- headers and
X-Tenantmail-Notification-Id are kept, and the Message-ID is ours (one per attempt) so the relay's
logs and the recipient's copy can be matched to the delivery_attempt row that recorded it.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate

from shared.message import NOTIFICATION_ID_HEADER, Message, Recipient

_PRIORITY = {"high": ("high", "1"), "low": ("low", "5")}


@dataclass(frozen=True, slots=True)
class Envelope:
    """What goes over SMTP: the envelope sender and recipients, the Message-ID and the bytes."""

    mail_from: str
    recipients: tuple[str, ...]
    message_id: str
    data: bytes


def new_message_id(sender_address: str) -> str:
    """A unique Message-ID in the sender's domain."""
    return f"<{uuid.uuid4().hex}@{sender_address.rpartition('@')[2]}>"


def smtp_envelope(m: Message, *, sender_address: str, sender_name: str | None, reply_to: str | None,
                  notification_id: str, message_id: str | None = None) -> Envelope:
    """The SMTP envelope and RFC 5322 bytes (CRLF line ends) of a validated message."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = _address(Recipient(sender_address, sender_name))
    msg["To"] = [_address(r) for r in m.to]
    if m.cc:
        msg["Cc"] = [_address(r) for r in m.cc]
    replies = m.reply_to or ((Recipient(reply_to),) if reply_to else ())
    if replies:
        msg["Reply-To"] = [_address(r) for r in replies]
    msg["Subject"] = m.subject
    msg["Date"] = formatdate(usegmt=True)
    message_id = message_id or new_message_id(sender_address)
    msg["Message-ID"] = message_id
    if m.importance in _PRIORITY:
        msg["Importance"], msg["X-Priority"] = _PRIORITY[m.importance]
    for name, value in m.headers:
        msg[name] = value
    msg[NOTIFICATION_ID_HEADER] = notification_id
    msg.set_content(m.body, subtype="html" if m.body_type == "html" else "plain", charset="utf-8")
    _attach(msg, m)
    recipients = tuple(r.address for r in (*m.to, *m.cc, *m.bcc))
    return Envelope(sender_address, recipients, message_id, msg.as_bytes())


def _address(r: Recipient) -> Address:
    local, _, domain = r.address.rpartition("@")
    return Address(display_name=r.name or "", username=local, domain=domain)


def _attach(msg: EmailMessage, m: Message) -> None:
    # Inline parts with a Content-ID belong with an HTML body (multipart/related); the rest are files.
    inline = [a for a in m.attachments if a.is_inline and a.content_id and m.body_type == "html"]
    for a in inline:
        maintype, _, subtype = a.content_type.partition(";")[0].strip().partition("/")
        msg.add_related(base64.b64decode(a.content_bytes), maintype, subtype, cid=f"<{a.content_id}>",
                        filename=a.name, disposition="inline")
    for a in m.attachments:
        if a in inline:
            continue
        maintype, _, subtype = a.content_type.partition(";")[0].strip().partition("/")
        msg.add_attachment(base64.b64decode(a.content_bytes), maintype, subtype, filename=a.name,
                           disposition="inline" if a.is_inline else "attachment",
                           cid=f"<{a.content_id}>" if a.content_id else None)
