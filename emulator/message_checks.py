"""Validation of a sendMail body: recipients, internet message headers, `from`, saveToSentItems."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# The TLD is alphabetic or an IDN TLD in its ASCII form (xn--p1ai), which Graph resolves.
_ADDRESS = re.compile(
    r"^[^@\s<>()\[\],;:\"]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\.(?:[A-Za-z]{2,}|[Xx][Nn]--[A-Za-z0-9-]+)$")
_RECIPIENT_FIELDS = ("toRecipients", "ccRecipients", "bccRecipients")


class MessageProblem(Exception):
    """A body the catalogue rejects; `problem` is a graph_errors.CATALOGUE key."""

    def __init__(self, problem: str, **fields: Any) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fields = fields


@dataclass
class CheckedMessage:
    """What the outbox records about a valid message."""

    message: dict[str, Any]
    recipients: list[str]
    x_headers: dict[str, str]
    from_address: str | None
    save_to_sent_items: bool


def _address_of(entry: Any) -> str:
    if isinstance(entry, dict):
        email = entry.get("emailAddress")
        if isinstance(email, dict):
            return str(email.get("address") or "")
    return ""


def _recipients(message: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for name in _RECIPIENT_FIELDS:
        entries = message.get(name) or []
        if not isinstance(entries, list):
            raise MessageProblem("bad_json")
        for entry in entries:
            address = _address_of(entry)
            if not _ADDRESS.match(address):
                raise MessageProblem("unresolved_recipient", address=address)
            found.append(address)
    if not found:
        raise MessageProblem("no_recipients")
    return found


def _headers(message: dict[str, Any], limit: int) -> dict[str, str]:
    if "internetMessageHeaders" not in message or message["internetMessageHeaders"] is None:
        return {}
    headers = message["internetMessageHeaders"]
    if not isinstance(headers, list) or not headers or len(headers) > limit:
        raise MessageProblem("bad_header_collection", limit=limit)
    out: dict[str, str] = {}
    for header in headers:
        name = str(header.get("name", "")) if isinstance(header, dict) else ""
        if not name.lower().startswith("x-"):
            raise MessageProblem("bad_header_name", name=name)
        out[name] = str(header.get("value", ""))
    return out


def _save_flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() != "false"
    return True if value is None else bool(value)


def check_message(body: Any, max_headers: int) -> CheckedMessage:
    """Validate a decoded sendMail body or raise MessageProblem."""
    if not isinstance(body, dict):
        raise MessageProblem("bad_json")
    message = body.get("message") or body.get("Message")
    if not isinstance(message, dict):
        raise MessageProblem("no_message")
    recipients = _recipients(message)
    x_headers = _headers(message, max_headers)
    sender = _address_of(message.get("from")) or None
    save = _save_flag(body.get("saveToSentItems", body.get("SaveToSentItems")))
    return CheckedMessage(message, recipients, x_headers, sender, save)
