"""Normalized recipients: what the activity's recipient filter matches, exactly and through an index.

The producer writes one `notification_recipient` row per distinct address of a notification's to, cc
and bcc, in the transaction that stores the notification; `normalize` is the one definition of the
form kept there and of the form a filter is compared in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RECIPIENT_FIELDS = ("to", "cc", "bcc")


def normalize(address: str) -> str:
    """An address as stored and compared: trimmed and lower-cased."""
    return address.strip().lower()


def recipients_of(payload: Mapping[str, Any]) -> list[str]:
    """The distinct normalized addresses of a stored message (`message_to_dict`), in order of appearance."""
    seen: dict[str, None] = {}
    for field in RECIPIENT_FIELDS:
        for r in payload.get(field) or ():
            address = r.get("address") if isinstance(r, Mapping) else r
            if isinstance(address, str) and address.strip():
                seen.setdefault(normalize(address), None)
    return list(seen)
