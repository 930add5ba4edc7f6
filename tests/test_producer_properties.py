"""Hypothesis properties of the producer's validation, through `Producer.enqueue` into a real database.

1. Whatever it is given, `enqueue` stores one row or raises `ValidationFailed` naming a printable
   field, and stores nothing then.
2. A line break anywhere a header line is made from (subject, display names, header names and
   values, attachment names) or in the tenant id or idempotency key is refused.
3. Every message it stores, rebuilt from the database the way a worker does, is a sendMail body the
   emulator's own message checks accept (emulator/message_checks.py: recipients, headers, shape) and
   within Graph's request size.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from emulator.config import EmulatorConfig
from emulator.message_checks import check_message
from shared.db import make_engine
from shared.errors import ValidationFailed
from shared.message import MAX_REQUEST_BYTES, graph_request_body, message_from_stored
from shared.models import Notification
from shared.producer import Producer
from shared.settings import Settings

_N = Notification.__table__  # type: ignore[attr-defined]
PROPERTY = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.filter_too_much])
BREAKS = ("\r", "\n", "\r\n")
SENDER = {"sender_address": "governance@contoso.example", "sender_name": "Governance Team",
          "reply_to": "governance@contoso.example"}

any_char = st.characters(exclude_categories=())
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(any_char, max_size=12)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(any_char, max_size=8), inner, max_size=3), max_leaves=10)
safe_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)
unicode_text = st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")), max_size=20)


addresses = st.emails() | st.sampled_from(
    ["ana@example.org", "B.c+tag@sub.example.org", "info@bücher.example", "a'b@example.com", "x@y.test"])
recipients = addresses | st.fixed_dictionaries({"address": addresses}, optional={"name": unicode_text | st.none()})
header_names = st.from_regex(r"\A[Xx]-[A-Za-z0-9-]{1,20}\Z")
header_values = st.from_regex(r"\A[\x20-\x7e]{1,40}\Z")
attachments = st.fixed_dictionaries({
    "name": st.sampled_from(["a.txt", "résumé.pdf", "report 2026.csv"]),
    "content_type": st.sampled_from(["text/plain", "application/pdf", "text/csv; charset=utf-8"]),
    "content_bytes": st.binary(max_size=48).map(lambda b: base64.b64encode(b).decode()),
}, optional={"is_inline": st.booleans(), "content_id": st.sampled_from(["c1", "logo@x"])})
# Mostly valid messages, so that property 3 sees many stored ones.
messages = st.fixed_dictionaries(
    {"to": st.lists(recipients, min_size=1, max_size=3)},
    optional={"cc": st.lists(recipients, max_size=2), "bcc": st.lists(recipients, max_size=2),
              "reply_to": st.lists(recipients, max_size=2), "subject": unicode_text, "body": st.text(max_size=60),
              "body_type": st.sampled_from(["text", "html", "HTML"]),
              "importance": st.sampled_from(["low", "normal", "high"]),
              "headers": st.dictionaries(header_names, header_values, max_size=4),
              "attachments": st.lists(attachments, max_size=2)})


@pytest.fixture
def producer(database_url: str) -> Producer:
    """A producer on this test's database (SQLite file or PostgreSQL)."""
    return Producer(make_engine(Settings(database_url=database_url)), Settings(database_url=database_url))


def _rows(producer: Producer) -> int:
    with producer._engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(_N)) or 0)


def _stored(producer: Producer, nid: str) -> dict[str, Any]:
    with producer._engine.connect() as conn:
        payload: dict[str, Any] = conn.execute(select(_N.c.payload).where(_N.c.id == nid)).scalar_one()
    return payload


def _enqueue_or_reject(producer: Producer, tenant: object, message: object, key: object) -> str | None:
    """The id, or None after checking the refusal: a printable field and no row stored."""
    before = _rows(producer)
    earlier = _keyed_id(producer, tenant, key)
    try:
        nid = producer.enqueue(tenant, message, key)  # type: ignore[arg-type]
    except ValidationFailed as exc:
        assert exc.field and exc.field.isprintable() and len(exc.field) < 200, exc.field
        assert _rows(producer) == before
        return None
    if earlier is None:
        assert _rows(producer) == before + 1
        assert _keyed_id(producer, tenant, key) in (None, nid)  # stored under its key when it has one
    else:  # a repeated key returns the stored row and stores nothing
        assert (nid, _rows(producer)) == (earlier, before)
    return nid


def _keyed_id(producer: Producer, tenant: object, key: object) -> str | None:
    """The id already stored under (tenant, key), if that pair names one."""
    if not (isinstance(tenant, str) and isinstance(key, str)):
        return None
    with producer._engine.connect() as conn:
        found: str | None = conn.execute(select(_N.c.id).where(_N.c.tenant_id == tenant,
                                                               _N.c.idempotency_key == key)).scalar()
    return found


def _run(test: Callable[..., None], strategy: Any) -> None:
    PROPERTY(given(strategy)(test))()


def test_enqueue_raises_only_validation_failed_whatever_it_is_given(producer: Producer) -> None:
    seen = {"accepted": 0, "refused": 0}

    def check(case: tuple[Any, Any, Any]) -> None:
        outcome = _enqueue_or_reject(producer, *case)
        seen["refused" if outcome is None else "accepted"] += 1

    valid_tenants = st.sampled_from(["acme", "t-1.x:y_z"])
    tenants = st.one_of(valid_tenants, valid_tenants, valid_tenants, json_scalars)  # mostly valid: deeper paths
    keys = st.one_of(st.none(), st.none(), safe_text, json_scalars)
    _run(check, st.tuples(tenants, st.one_of(messages, messages, json_values), keys))
    assert seen["refused"] >= 10, seen  # stored messages get their own property below


def test_a_line_break_in_any_header_line_source_is_refused(producer: Producer) -> None:
    def place(message: dict[str, Any], where: str, bad: str) -> tuple[str, dict[str, Any], str | None]:
        to = [{"address": "ana@example.org", "name": bad}]
        cases: dict[str, tuple[str, dict[str, Any], str | None]] = {
            "subject": ("acme", {**message, "subject": bad}, None),
            "to name": ("acme", {**message, "to": to}, None),
            "cc name": ("acme", {**message, "cc": to}, None),
            "reply_to name": ("acme", {**message, "reply_to": to}, None),
            "header name": ("acme", {**message, "headers": [{"name": "X-" + bad, "value": "v"}]}, None),
            "header value": ("acme", {**message, "headers": {"X-Ref": bad}}, None),
            "attachment name": ("acme", {**message, "attachments": [
                {"name": bad + ".txt", "content_type": "text/plain", "content_bytes": "aGk="}]}, None),
            "tenant": (bad, message, None),
            "idempotency key": ("acme", message, bad),
        }
        return cases[where]

    def check(case: tuple[dict[str, Any], str, str, str, int]) -> None:
        message, where, text, brk, at = case
        at %= len(text) + 1
        tenant, bad_message, key = place(message, where, text[:at] + brk + text[at:])
        assert _enqueue_or_reject(producer, tenant, bad_message, key) is None, (where, bad_message)

    wheres = st.sampled_from(["subject", "to name", "cc name", "reply_to name", "header name", "header value",
                              "attachment name", "tenant", "idempotency key"])
    _run(check, st.tuples(messages, wheres, safe_text.filter(bool), st.sampled_from(BREAKS), st.integers(0, 40)))


def _header_strings(message: dict[str, Any]) -> list[str]:
    people = [message.get("from") or {}] + [r for f in ("toRecipients", "ccRecipients", "bccRecipients", "replyTo")
                                            for r in message.get(f) or []]
    names = [p["emailAddress"].get("name") or "" for p in people] + [p["emailAddress"]["address"] for p in people]
    headers = [v for h in message.get("internetMessageHeaders") or [] for v in (h["name"], h["value"])]
    files = [a["name"] for a in message.get("attachments") or []]
    return [message.get("subject") or "", *names, *headers, *files]


def test_every_stored_message_passes_the_emulators_sendmail_checks(producer: Producer) -> None:
    max_headers = EmulatorConfig().max_internet_headers
    stored: list[str] = []

    def check(message: dict[str, Any]) -> None:
        nid = _enqueue_or_reject(producer, "acme", message, None)
        assume(nid is not None)
        assert nid is not None
        body = graph_request_body(message_from_stored(_stored(producer, nid)), notification_id=nid, checked=True,
                                  **SENDER)
        assert len(body) <= MAX_REQUEST_BYTES
        checked = check_message(json.loads(body), max_headers)  # raises MessageProblem if Graph would refuse it
        assert checked.save_to_sent_items is False and checked.from_address == SENDER["sender_address"]
        for text in _header_strings(checked.message):
            assert not {"\r", "\n"} & set(text), text
        stored.append(nid)

    _run(check, messages)
    assert len(stored) >= 50, f"only {len(stored)} messages were stored: the property saw too few"


def test_an_idn_top_level_domain_passes_the_emulators_checks(producer: Producer) -> None:
    nid = producer.enqueue("acme", {"to": ["info@пример.рф"], "subject": "IDN"})
    payload = _stored(producer, nid)
    assert payload["to"] == [{"address": "info@xn--e1afmkfd.xn--p1ai"}]
    body = graph_request_body(message_from_stored(payload), notification_id=nid, checked=True, **SENDER)
    check_message(json.loads(body), EmulatorConfig().max_internet_headers)
