"""Uploaded attachments (shared.message: 3 MiB or more each) are stored apart from their notification.

    producer: payload ──detach_uploads──▶ payload with {name, content_type, stored_size, …}
                                          + one notification_attachment row per uploaded attachment (bytes)
    worker:   load_upload(notification id, position) ──▶ the bytes, read once per attempt from the database

A message of up to 150 MB never sits in the notification row: the claim, the activity, the API and the
dispatcher read the small payload only, and Celery messages carry notification ids, never content. Both
databases keep the bytes in a LargeBinary column (bytea on PostgreSQL, BLOB on SQLite).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, insert, select

from shared.message import UPLOAD_MIN_BYTES, decoded_size
from shared.models import NotificationAttachment

_T = NotificationAttachment.__table__  # type: ignore[attr-defined]


def detach_uploads(payload: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The payload to store, its uploaded attachments reduced to their description, and the rows of
    their bytes (without `notification_id`, which `store_uploads` adds)."""
    out = dict(payload)
    blobs: list[dict[str, Any]] = []
    attachments = []
    for position, attachment in enumerate(payload.get("attachments") or ()):
        text = attachment.get("content_bytes") or ""
        if decoded_size(text) < UPLOAD_MIN_BYTES:
            attachments.append(attachment)
            continue
        content = base64.b64decode(text)
        blobs.append({"position": position, "size_bytes": len(content),
                      "sha256": hashlib.sha256(content).hexdigest(), "content": content})
        described = {k: v for k, v in attachment.items() if k != "content_bytes"}
        attachments.append({**described, "stored_size": len(content)})
    if blobs:
        out["attachments"] = attachments
    return out, blobs


def uploaded_bytes(payload: Mapping[str, Any]) -> int:
    """How many bytes a stored payload's uploaded attachments hold together (0 for an ordinary message)."""
    return sum(int(a.get("stored_size") or 0) for a in payload.get("attachments") or ())


def store_uploads(conn: Connection, notification_id: str, blobs: Sequence[Mapping[str, Any]]) -> None:
    """Insert a notification's detached attachments, in the caller's transaction."""
    if blobs:
        conn.execute(insert(_T), [{**b, "notification_id": notification_id} for b in blobs])


def load_upload(engine: Engine, notification_id: str, position: int) -> tuple[bytes, str]:
    """One uploaded attachment's bytes and SHA-256 (hex)."""
    with engine.connect() as conn:
        row = conn.execute(select(_T.c.content, _T.c.sha256).where(
            _T.c.notification_id == notification_id, _T.c.position == position)).one()
    return bytes(row.content), str(row.sha256)
