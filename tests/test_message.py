"""shared.message: validating producers' messages and building the Graph sendMail body."""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import ValidationFailed
from shared.message import (
    MAX_ATTACHMENT_BYTES,
    MAX_ATTACHMENTS,
    MAX_CUSTOM_HEADERS,
    MAX_MESSAGE_BYTES,
    MAX_NAME_CHARS,
    MAX_NOTIFICATION_ID_CHARS,
    MAX_RECIPIENTS,
    MAX_REPLY_TO,
    MAX_REQUEST_BYTES,
    MAX_SUBJECT_CHARS,
    NOTIFICATION_ID_HEADER,
    UPLOAD_MIN_BYTES,
    Attachment,
    Message,
    Recipient,
    graph_request_body,
    message_from_stored,
    message_to_dict,
    parse_message,
    recipient_addresses,
    uploaded_attachments,
)

# A valid address of exactly 254 characters: local part 64, domain 189.
LONGEST_ADDRESS = "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 57 + ".com"
SENDER = {"sender_address": "noreply@contoso.com", "sender_name": "Contoso", "reply_to": None}
WORST_SENDER = {
    "sender_address": LONGEST_ADDRESS,
    "sender_name": "\U0001f4e7" * MAX_NAME_CHARS,
    "reply_to": LONGEST_ADDRESS,
    "notification_id": '"' * MAX_NOTIFICATION_ID_CHARS,
}
LINE_BREAKS = ["\r", "\n", "\r\n", "\x00", "\x85", "\u2028"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def msg(**fields: Any) -> dict[str, Any]:
    """A valid producer dict, with `fields` replacing or adding keys."""
    return {"to": ["alice@example.com"], "subject": "Hello", "body": "Hi", **fields}


def rejected(data: object) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as info:
        parse_message(data)
    return info.value


def body_json(m: Message, **overrides: Any) -> dict[str, Any]:
    args = {**SENDER, "notification_id": "n-1", **overrides}
    parsed: dict[str, Any] = json.loads(graph_request_body(m, **args))
    return parsed


# --- shape and types -------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [None, 3, "to: a@example.com", ["a@example.com"], b"{}"])
def test_parse_rejects_non_object(data: object) -> None:
    assert rejected(data).field == "message"


def test_parse_rejects_unknown_key_naming_it() -> None:
    assert rejected(msg(priority="high")).field == "priority"


def test_parse_rejects_non_string_key() -> None:
    data: dict[Any, Any] = msg()
    data[7] = "x"
    assert rejected(data).field == "<int key>"


def test_parse_rejects_empty_key_with_visible_field() -> None:
    assert rejected(msg(**{"": 1})).field == "''"


def test_parse_quotes_unsafe_unknown_key_in_field() -> None:
    field = rejected(msg(**{"evil\r\nkey" + "k" * 500: 1})).field
    assert field.isprintable() and field.isascii() and len(field) <= 80


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"to": "alice@example.com"}, "to"),
        ({"to": 3}, "to"),
        ({"cc": {"address": "a@example.com"}}, "cc"),
        ({"to": [3]}, "to[0]"),
        ({"to": [["alice@example.com"]]}, "to[0]"),
        ({"to": [{"name": "Alice"}]}, "to[0].address"),
        ({"to": [{"address": 3}]}, "to[0].address"),
        ({"to": [{"address": "a@example.com", "name": ["Alice"]}]}, "to[0].name"),
        ({"to": [{"address": "a@example.com", "nick": "A"}]}, "to[0].nick"),
        ({"subject": 1}, "subject"),
        ({"body": {"html": "x"}}, "body"),
        ({"body_type": 1}, "body_type"),
        ({"importance": True}, "importance"),
        ({"headers": "X-A: b"}, "headers"),
        ({"headers": [["X-A", "b"]]}, "headers[0]"),
        ({"headers": [{"name": 1, "value": "b"}]}, "headers[0].name"),
        ({"headers": [{"name": "X-A", "value": "b", "x": 1}]}, "headers[0].x"),
        ({"headers": {"X-A": 1}}, "headers.X-A"),
        ({"attachments": {"name": "a"}}, "attachments"),
        ({"attachments": ["a.txt"]}, "attachments[0]"),
        ({"reply_to": "help@example.com"}, "reply_to"),
    ],
)
def test_parse_rejects_wrong_types_naming_the_field(fields: dict[str, Any], field: str) -> None:
    assert rejected(msg(**fields)).field == field


def test_parse_treats_null_optional_fields_as_absent() -> None:
    nulls = dict.fromkeys(["cc", "bcc", "reply_to", "subject", "body", "body_type", "headers", "importance"])
    m = parse_message(msg(**nulls, attachments=None))
    assert (m.subject, m.body, m.body_type, m.importance, m.headers) == ("", "", "text", "normal", ())


# --- recipients ----------------------------------------------------------------------------------


def test_parse_accepts_strings_and_objects_as_recipients() -> None:
    m = parse_message(msg(to=["a@example.com", {"address": "b@example.com", "name": "Bee"}], cc=[], bcc=None))
    assert m.to == (Recipient("a@example.com"), Recipient("b@example.com", "Bee"))


def test_parse_rejects_message_without_recipients() -> None:
    assert rejected({"subject": "x"}).field == "to"
    assert rejected(msg(to=[], cc=[], bcc=[])).field == "to"


def test_parse_accepts_bcc_only() -> None:
    assert parse_message(msg(to=[], bcc=["b@example.com"])).bcc == (Recipient("b@example.com"),)


def test_parse_accepts_exactly_max_recipients() -> None:
    to = [f"u{i}@example.com" for i in range(300)]
    cc = [f"c{i}@example.com" for i in range(MAX_RECIPIENTS - 300)]
    assert len(parse_message(msg(to=to, cc=cc)).cc) == MAX_RECIPIENTS - 300


def test_parse_rejects_more_than_max_recipients_across_lists() -> None:
    to = [f"u{i}@example.com" for i in range(300)]
    cc = [f"c{i}@example.com" for i in range(MAX_RECIPIENTS - 300)]
    assert rejected(msg(to=to, cc=cc, bcc=["one.more@example.com"])).field == "bcc"


def test_parse_counts_a_recipient_named_in_several_lists_once() -> None:
    to = [f"u{i}@example.com" for i in range(MAX_RECIPIENTS)]
    cc = [a.upper() for a in to[:100]]  # the same mailboxes, another case
    m = parse_message(msg(to=to, cc=cc, bcc=to[100:200]))
    assert len(recipient_addresses(m.to, m.cc, m.bcc)) == MAX_RECIPIENTS
    assert rejected(msg(to=to, cc=[*cc, "new@example.com"])).field == "cc"


def test_parse_rejects_huge_recipient_list_before_validating_it() -> None:
    assert rejected(msg(to=[0] * 1_000_000)).field == "to"


def test_parse_rejects_too_many_reply_to() -> None:
    assert rejected(msg(reply_to=[f"r{i}@example.com" for i in range(MAX_REPLY_TO + 1)])).field == "reply_to"


@pytest.mark.parametrize(
    "address",
    [
        "",
        "alice",
        "alice@",
        "@example.com",
        "alice@example",
        "alice@@example.com",
        "alice smith@example.com",
        '"alice"@example.com',
        "alice@[192.0.2.1]",
        "élodie@example.com",
        "alice@example.com\r\nBcc: eve@example.com",
        "Alice <alice@example.com>",
        "a" * 65 + "@example.com",
        "a@" + "b" * 250 + ".com",
        "x" * 10_000_000,
        "alice@example.invalid",
        "alice@\ud800.com",
    ],
)
def test_parse_rejects_invalid_address(address: str) -> None:
    assert rejected(msg(to=["ok@example.com", {"address": address}])).field == "to[1].address"
    assert rejected(msg(to=[address])).field == "to[0].address"


def test_parse_accepts_longest_address() -> None:
    assert parse_message(msg(to=[LONGEST_ADDRESS])).to[0].address == LONGEST_ADDRESS


def test_parse_stores_idn_domain_in_ascii_form() -> None:
    assert parse_message(msg(to=["info@bücher.example"])).to[0].address == "info@xn--bcher-kva.example"


def test_parse_accepts_test_domains_for_test_tenants() -> None:
    assert parse_message(msg(to=["user@contoso.test"])).to[0].address == "user@contoso.test"


@pytest.mark.parametrize("bad", LINE_BREAKS + ["\t", "\x7f", "\x1b[31m", "\u2029", "\udc00"])
def test_parse_rejects_control_characters_in_display_name(bad: str) -> None:
    to = [{"address": "a@example.com", "name": f"Alice{bad}Bcc: eve@example.com"}]
    assert rejected(msg(to=to)).field == "to[0].name"
    assert rejected(msg(reply_to=[{"address": "r@example.com", "name": bad}])).field == "reply_to[0].name"


def test_parse_rejects_overlong_display_name() -> None:
    to = [{"address": "a@example.com", "name": "n" * (MAX_NAME_CHARS + 1)}]
    assert rejected(msg(to=to)).field == "to[0].name"


def test_parse_treats_empty_display_name_as_none() -> None:
    assert parse_message(msg(to=[{"address": "a@example.com", "name": ""}])).to[0].name is None


def test_parse_keeps_unicode_and_quotes_in_display_name() -> None:
    name = 'Zoë "the boss" <Ørsted>, 日本'
    assert parse_message(msg(to=[{"address": "z@example.com", "name": name}])).to[0].name == name


# --- subject and body ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", LINE_BREAKS + ["\t", "\x0b", "\x1f", "\ud83d"])
def test_parse_rejects_crlf_and_controls_in_subject(bad: str) -> None:
    assert rejected(msg(subject=f"Invoice{bad}Bcc: eve@example.com")).field == "subject"


def test_parse_accepts_subject_of_max_length_and_rejects_longer() -> None:
    assert len(parse_message(msg(subject="s" * MAX_SUBJECT_CHARS)).subject) == MAX_SUBJECT_CHARS
    assert rejected(msg(subject="s" * (MAX_SUBJECT_CHARS + 1))).field == "subject"
    assert rejected(msg(subject="s" * 50_000_000)).field == "subject"


def test_parse_accepts_newlines_and_tabs_in_body() -> None:
    assert parse_message(msg(body="line 1\r\nline 2\n\tindented")).body == "line 1\r\nline 2\n\tindented"


@pytest.mark.parametrize("bad", ["\x00", "\x08", "\x0c", "\x1b", "\x7f", "\udfff"])
def test_parse_rejects_control_characters_in_body(bad: str) -> None:
    assert rejected(msg(body=f"Hello{bad}")).field == "body"


@pytest.mark.parametrize(("given", "stored"), [("text", "text"), ("HTML", "html"), ("Html", "html")])
def test_parse_normalises_body_type(given: str, stored: str) -> None:
    assert parse_message(msg(body_type=given)).body_type == stored


@pytest.mark.parametrize("bad", ["markdown", "", "text/html", "html" * 1000])
def test_parse_rejects_unknown_body_type(bad: str) -> None:
    assert rejected(msg(body_type=bad)).field == "body_type"


@pytest.mark.parametrize(("given", "stored"), [("low", "low"), ("Normal", "normal"), ("HIGH", "high")])
def test_parse_normalises_importance(given: str, stored: str) -> None:
    assert parse_message(msg(importance=given)).importance == stored


def test_parse_rejects_unknown_importance() -> None:
    assert rejected(msg(importance="urgent")).field == "importance"


# --- headers -------------------------------------------------------------------------------------


def test_parse_accepts_headers_as_dict_or_list_in_order() -> None:
    as_dict = parse_message(msg(headers={"X-B": "2", "x-a": "1"}))
    as_list = parse_message(msg(headers=[{"name": "X-B", "value": "2"}, {"name": "x-a", "value": "1"}]))
    assert as_dict.headers == as_list.headers == (("X-B", "2"), ("x-a", "1"))


@pytest.mark.parametrize(
    "name",
    [
        "Subject",
        "Reply-To",
        "In-Reply-To",
        "Message-ID",
        "X-",
        "X_Foo",
        "X-Foo Bar",
        "X-Foo:",
        "Y-Foo",
        "X-Ü",
    ],
)
def test_parse_rejects_non_x_header_names(name: str) -> None:
    assert rejected(msg(headers={name: "v"})).field == f"headers.{name if name.isascii() else ascii(name)}"


@pytest.mark.parametrize("name", ["X-Foo\n", "X-Foo\r\nBcc: eve@example.com", "\nX-Foo"])
def test_parse_rejects_line_breaks_in_header_name(name: str) -> None:
    field = rejected(msg(headers=[{"name": name, "value": "v"}])).field
    assert field.startswith("headers.") and "\n" not in field and "\r" not in field


def test_parse_rejects_overlong_header_name() -> None:
    assert rejected(msg(headers={"X-" + "a" * 63: "v"})).field.startswith("headers.'X-aaa")


@pytest.mark.parametrize("name", [NOTIFICATION_ID_HEADER, NOTIFICATION_ID_HEADER.lower()])
def test_parse_rejects_reserved_notification_id_header(name: str) -> None:
    assert rejected(msg(headers={name: "forged"})).field == f"headers.{name}"


def test_parse_rejects_duplicate_header_names_ignoring_case() -> None:
    headers = [{"name": "X-Trace", "value": "1"}, {"name": "x-TRACE", "value": "2"}]
    assert rejected(msg(headers=headers)).field == "headers.x-TRACE"


def test_parse_accepts_max_custom_headers_and_rejects_more() -> None:
    headers = {f"X-H{i}": str(i) for i in range(MAX_CUSTOM_HEADERS)}
    assert len(parse_message(msg(headers=headers)).headers) == MAX_CUSTOM_HEADERS
    assert rejected(msg(headers={**headers, "X-One-More": "v"})).field == "headers"
    as_list = [{"name": f"X-H{i}", "value": "v"} for i in range(MAX_CUSTOM_HEADERS + 1)]
    assert rejected(msg(headers=as_list)).field == "headers"


@pytest.mark.parametrize("value", ["a\r\nBcc: eve@example.com", "a\n", "\r", "tab\there", "é", "", "v" * 901])
def test_parse_rejects_bad_header_values(value: str) -> None:
    assert rejected(msg(headers={"X-Ok": "fine", "X-Bad": value})).field == "headers.X-Bad"


# --- attachments ---------------------------------------------------------------------------------


def attachment(**fields: Any) -> dict[str, Any]:
    return {"name": "report.csv", "content_type": "text/csv", "content_bytes": b64(b"a,b\n1,2\n"), **fields}


def test_parse_accepts_attachment_with_defaults_and_inline_image() -> None:
    inline = attachment(name="logo.png", content_type="image/png", is_inline=True, content_id="logo@acme")
    m = parse_message(msg(attachments=[attachment(), inline]))
    assert m.attachments[0] == Attachment("report.csv", "text/csv", b64(b"a,b\n1,2\n"))
    assert (m.attachments[1].is_inline, m.attachments[1].content_id) == (True, "logo@acme")


@pytest.mark.parametrize(
    "content",
    ["YWJj\n", "YW Jj", "YWJ", "YWJjZA=", "YWJj====", "YW=j", "Y*Jj", "YWJj\u00e9", 123, None],
)
def test_parse_rejects_non_strict_base64(content: object) -> None:
    assert (
        rejected(msg(attachments=[attachment(content_bytes=content)])).field == "attachments[0].content_bytes"
    )


def test_parse_rejects_attachments_over_total_decoded_limit() -> None:
    half = b64(b"\0" * (MAX_ATTACHMENT_BYTES // 2 + 1))
    data = msg(attachments=[attachment(content_bytes=half), attachment(content_bytes=half)])
    assert rejected(data).field == "attachments[1].content_bytes"


def test_parse_rejects_single_attachment_over_limit_without_decoding() -> None:
    too_long = "A" * (4 * -(-MAX_MESSAGE_BYTES // 3) + 4)
    assert rejected(msg(attachments=[attachment(content_bytes=too_long)])).field == "attachments[0].content_bytes"


def test_parse_rejects_attachments_over_the_message_limit_together() -> None:
    third = b64(b"\0" * (MAX_MESSAGE_BYTES // 3 + 1))
    assert rejected(msg(attachments=[attachment(content_bytes=third)] * 3)).field == "attachments[2].content_bytes"


def test_an_attachment_of_3_mib_is_uploaded_and_left_out_of_the_request_bodies() -> None:
    big = b64(b"\1" * UPLOAD_MIN_BYTES)
    m = parse_message(msg(attachments=[attachment(name="big.bin", content_bytes=big), attachment()]))
    assert [a.uploaded for a in m.attachments] == [True, False]
    assert uploaded_attachments(m) == ((0, m.attachments[0]),)
    kwargs = {"sender_address": "s@example.com", "sender_name": None, "reply_to": None, "notification_id": "n1"}
    send = orjson.loads(graph_request_body(m, **kwargs))
    assert [a["name"] for a in send["message"]["attachments"]] == ["report.csv"]
    draft = orjson.loads(graph_request_body(m, draft=True, **kwargs))
    assert [a["name"] for a in draft["attachments"]] == ["report.csv"]
    assert draft["singleValueExtendedProperties"] == [{"id": "Boolean 0x0E01", "value": "true"}]
    assert "saveToSentItems" not in draft


def test_a_stored_uploaded_attachment_reads_back_with_its_size_and_no_content() -> None:
    stored = {"to": [{"address": "a@example.com"}], "attachments": [
        {"name": "big.bin", "content_type": "application/octet-stream", "stored_size": UPLOAD_MIN_BYTES + 1,
         "is_inline": False}]}
    [a] = message_from_stored(stored).attachments
    assert a.uploaded and a.size_bytes == UPLOAD_MIN_BYTES + 1 and a.content_bytes == ""
    assert message_to_dict(message_from_stored(stored))["attachments"] == stored["attachments"]


def test_parse_rejects_too_many_attachments() -> None:
    assert rejected(msg(attachments=[attachment()] * (MAX_ATTACHMENTS + 1))).field == "attachments"


@pytest.mark.parametrize(
    "name", ["", "../etc/passwd", "a/b.txt", "a\\b.txt", "..", ".", "a\r\n.txt", "a\x00", 5]
)
def test_parse_rejects_bad_attachment_names(name: object) -> None:
    assert rejected(msg(attachments=[attachment(name=name)])).field == "attachments[0].name"


@pytest.mark.parametrize(
    "ctype", ["text", "text/", "text/plain\r\nX: y", "text plain", "", None, "a/" + "b" * 300]
)
def test_parse_rejects_bad_content_type(ctype: object) -> None:
    assert rejected(msg(attachments=[attachment(content_type=ctype)])).field == "attachments[0].content_type"


def test_parse_accepts_content_type_with_parameters() -> None:
    ctype = 'text/plain; charset=utf-8; name="report 1.txt"'
    assert (
        parse_message(msg(attachments=[attachment(content_type=ctype)])).attachments[0].content_type == ctype
    )


@pytest.mark.parametrize(("key", "value"), [("is_inline", "yes"), ("is_inline", 1), ("content_id", "<a@b>")])
def test_parse_rejects_bad_inline_fields(key: str, value: object) -> None:
    assert rejected(msg(attachments=[attachment(**{key: value})])).field == f"attachments[0].{key}"


def test_parse_rejects_unknown_attachment_key() -> None:
    assert rejected(msg(attachments=[attachment(size=3)])).field == "attachments[0].size"


# --- request size --------------------------------------------------------------------------------


def test_parse_rejects_message_whose_request_exceeds_4_mb() -> None:
    assert rejected(msg(body="\U0001f600" * (MAX_REQUEST_BYTES // 4))).field == "message"
    assert rejected(msg(body="x" * (MAX_REQUEST_BYTES + 1))).field == "body"


def test_request_size_limit_is_tight_and_holds_for_worst_sender() -> None:
    lo, hi = MAX_REQUEST_BYTES - 64 * 1024, MAX_REQUEST_BYTES
    while lo < hi:  # the longest accepted ASCII body
        mid = (lo + hi + 1) // 2
        try:
            parse_message(msg(body="x" * mid))
            lo = mid
        except ValidationFailed:
            hi = mid - 1
    m = parse_message(msg(body="x" * lo))
    size = len(graph_request_body(m, **WORST_SENDER))
    assert MAX_REQUEST_BYTES - 8 * 1024 < size <= MAX_REQUEST_BYTES


# --- storage round trip --------------------------------------------------------------------------


def full_message() -> dict[str, Any]:
    return {
        "to": ["a@example.com", {"address": "b@example.com", "name": "Bee Ø"}],
        "cc": [{"address": "c@example.com"}],
        "bcc": ["d@example.com"],
        "reply_to": [{"address": "help@example.com", "name": "Help desk"}],
        "subject": "Ваш счёт 🧾",
        "body": "<p>Hello</p>\n",
        "body_type": "HTML",
        "headers": {"X-Tenant": "t-42", "x-campaign": "spring"},
        "attachments": [
            attachment(),
            attachment(name="i.png", content_type="image/png", is_inline=True, content_id="i1"),
        ],
        "importance": "High",
    }


def test_message_to_dict_round_trips_through_parse_and_json() -> None:
    m = parse_message(full_message())
    stored = orjson.loads(orjson.dumps(message_to_dict(m)))
    assert parse_message(stored) == m


def test_message_to_dict_round_trips_minimal_message() -> None:
    m = parse_message({"bcc": ["d@example.com"]})
    assert message_to_dict(m)["to"] == []
    assert parse_message(message_to_dict(m)) == m


# --- Graph request body --------------------------------------------------------------------------


def test_graph_body_has_full_structure() -> None:
    m = parse_message(full_message())
    body = body_json(m, reply_to="ignored@example.com", notification_id="ntf-1")
    assert body["saveToSentItems"] is False
    g = body["message"]
    assert g["from"] == {"emailAddress": {"address": "noreply@contoso.com", "name": "Contoso"}}
    assert g["toRecipients"] == [
        {"emailAddress": {"address": "a@example.com"}},
        {"emailAddress": {"address": "b@example.com", "name": "Bee Ø"}},
    ]
    assert g["ccRecipients"] == [{"emailAddress": {"address": "c@example.com"}}]
    assert g["bccRecipients"] == [{"emailAddress": {"address": "d@example.com"}}]
    assert g["replyTo"] == [{"emailAddress": {"address": "help@example.com", "name": "Help desk"}}]
    assert g["body"] == {"contentType": "HTML", "content": "<p>Hello</p>\n"}
    assert (g["subject"], g["importance"]) == ("Ваш счёт 🧾", "high")
    assert g["internetMessageHeaders"] == [
        {"name": "X-Tenant", "value": "t-42"},
        {"name": "x-campaign", "value": "spring"},
        {"name": NOTIFICATION_ID_HEADER, "value": "ntf-1"},
    ]
    assert g["attachments"][1] == {
        "@odata.type": "#microsoft.graph.fileAttachment",
        "name": "i.png",
        "contentType": "image/png",
        "contentBytes": b64(b"a,b\n1,2\n"),
        "isInline": True,
        "contentId": "i1",
    }


def test_graph_body_omits_empty_arrays_but_always_has_notification_header() -> None:
    g = body_json(parse_message(msg()))["message"]
    assert set(g) == {"subject", "body", "from", "importance", "toRecipients", "internetMessageHeaders"}
    assert g["internetMessageHeaders"] == [{"name": NOTIFICATION_ID_HEADER, "value": "n-1"}]
    assert g["body"]["contentType"] == "Text"


def test_graph_body_uses_default_reply_to_when_message_has_none() -> None:
    g = body_json(parse_message(msg()), reply_to="support@contoso.com", sender_name=None)["message"]
    assert g["replyTo"] == [{"emailAddress": {"address": "support@contoso.com"}}]
    assert g["from"] == {"emailAddress": {"address": "noreply@contoso.com"}}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"sender_address": "not an address"}, "sender_address"),
        ({"sender_name": "Contoso\r\nBcc: eve@example.com"}, "sender_name"),
        ({"reply_to": "help@"}, "reply_to"),
        ({"notification_id": "n-1\r\nBcc: eve@example.com"}, "notification_id"),
        ({"notification_id": ""}, "notification_id"),
        ({"notification_id": "n" * (MAX_NOTIFICATION_ID_CHARS + 1)}, "notification_id"),
    ],
)
def test_graph_body_rejects_unsafe_sender_arguments(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        body_json(parse_message(msg()), **overrides)
    assert info.value.field == field


def test_graph_body_revalidates_hand_built_message() -> None:
    forged = Message(to=(Recipient("a@example.com", "Eve\r\nBcc: eve@example.com"),))
    with pytest.raises(ValidationFailed) as info:
        body_json(forged)
    assert info.value.field == "to[0].name"


# --- properties ----------------------------------------------------------------------------------

any_char = st.characters(exclude_categories=())
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(any_char, max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(any_char, max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
addresses = st.sampled_from(
    ["a@example.com", "B.c+tag@sub.example.org", "info@bücher.example", LONGEST_ADDRESS]
)
names = st.none() | st.text(any_char, max_size=30) | st.sampled_from(["Alice", "Zoë Ørsted"])
recipients = addresses | st.emails() | st.fixed_dictionaries({"address": addresses}, optional={"name": names})
header_names = st.from_regex(r"\A[Xx]-[A-Za-z0-9-]{1,20}\Z") | st.text(any_char, max_size=12)
header_values = st.from_regex(r"\A[\x20-\x7e]{1,40}\Z") | st.text(any_char, max_size=12)
attachments = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["a.txt", "b/c", "r\u00e9sum\u00e9.pdf"]) | st.text(any_char, max_size=10),
        "content_type": st.sampled_from(["text/plain", "image/png", "bad"]),
        "content_bytes": st.binary(max_size=64).map(b64) | st.text(max_size=8),
    },
    optional={"is_inline": st.booleans(), "content_id": st.sampled_from(["c1", "x y"])},
)
message_like = st.fixed_dictionaries(
    {"to": st.lists(recipients, max_size=3)},
    optional={
        "cc": st.lists(recipients, max_size=2) | json_values,
        "bcc": st.lists(recipients, max_size=2),
        "reply_to": st.lists(recipients, max_size=2),
        "subject": st.text(any_char, max_size=40) | json_values,
        "body": st.text(any_char, max_size=80),
        "body_type": st.sampled_from(["text", "HTML", "md"]),
        "headers": st.dictionaries(header_names, header_values, max_size=5)
        | st.lists(st.fixed_dictionaries({"name": header_names, "value": header_values}), max_size=5),
        "attachments": st.lists(attachments, max_size=2) | json_values,
        "importance": st.sampled_from(["low", "HIGH", "urgent"]),
    },
)
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
UNSAFE = set("\r\n\x00\x85\u2028\u2029")


@PROPERTY
@given(json_values | message_like)
def test_parse_raises_only_validation_failed_on_any_json_value(data: object) -> None:
    try:
        parse_message(data)
    except ValidationFailed as exc:
        assert exc.field and exc.field.isprintable() and len(exc.field) < 200


def assert_safe_line(text: str | None) -> None:
    assert text is None or not (UNSAFE & set(text))


@PROPERTY
@given(message_like)
def test_accepted_messages_are_safe_and_fit_graph(data: dict[str, Any]) -> None:
    try:
        m = parse_message(data)
    except ValidationFailed:
        return
    assert_safe_line(m.subject)
    for r in m.to + m.cc + m.bcc + m.reply_to:
        assert_safe_line(r.name)
        assert "\n" not in r.address and "\r" not in r.address and len(r.address) <= 254
    for name, value in m.headers:
        assert name[:2] in ("X-", "x-") and name.lower() != NOTIFICATION_ID_HEADER.lower()
        assert_safe_line(name)
        assert_safe_line(value)
    assert 1 <= len(recipient_addresses(m.to, m.cc, m.bcc)) <= MAX_RECIPIENTS
    assert len(m.headers) <= MAX_CUSTOM_HEADERS
    raw = graph_request_body(m, **WORST_SENDER)
    assert len(raw) <= MAX_REQUEST_BYTES
    assert json.loads(raw)["message"]["internetMessageHeaders"][-1]["name"] == NOTIFICATION_ID_HEADER
    assert parse_message(message_to_dict(m)) == m


safe_text = st.text(st.characters(codec="ascii", min_codepoint=0x20, max_codepoint=0x7E), max_size=20)
breaks = st.sampled_from(["\r", "\n", "\r\n", "\n\r"])


def inject(text: str, brk: str, at: int) -> str:
    at %= len(text) + 1
    return text[:at] + brk + text[at:]


@PROPERTY
@given(
    safe_text,
    breaks,
    st.integers(0, 40),
    st.sampled_from(["subject", "to", "cc", "reply_to", "hvalue", "file"]),
)
def test_injected_line_breaks_are_always_rejected(text: str, brk: str, at: int, where: str) -> None:
    bad = inject(text, brk, at)
    cases = {
        "subject": (msg(subject=bad), "subject"),
        "to": (msg(to=[{"address": "a@example.com", "name": bad}]), "to[0].name"),
        "cc": (msg(cc=[{"address": "c@example.com", "name": bad}]), "cc[0].name"),
        "reply_to": (msg(reply_to=[{"address": "r@example.com", "name": bad}]), "reply_to[0].name"),
        "hvalue": (msg(headers={"X-Id": bad}), "headers.X-Id"),
        "file": (msg(attachments=[attachment(name=bad + "x")]), "attachments[0].name"),
    }
    data, field = cases[where]
    assert rejected(data).field == field


@PROPERTY
@given(st.from_regex(r"\A[Xx]-[A-Za-z0-9-]{1,20}\Z"), breaks, st.integers(0, 40))
def test_injected_line_breaks_in_header_names_are_always_rejected(name: str, brk: str, at: int) -> None:
    field = rejected(msg(headers=[{"name": inject(name, brk, at), "value": "v"}])).field
    assert field.startswith("headers.") and not (set(field) & UNSAFE)


def test_message_from_stored_rebuilds_what_message_to_dict_stored() -> None:
    from shared.message import message_from_stored

    m = parse_message({
        "to": [{"address": "a@example.com", "name": "Ana"}], "cc": ["c@example.com"], "bcc": ["b@example.com"],
        "reply_to": ["r@example.com"], "subject": "S", "body": "<p>x</p>", "body_type": "HTML",
        "importance": "high", "headers": {"X-One": "1"},
        "attachments": [{"name": "a.txt", "content_type": "text/plain", "content_bytes": "aGk=",
                         "content_id": "cid1", "is_inline": True}],
    })
    assert message_from_stored(message_to_dict(m)) == m
