"""transport.smtp.SmtpRelayClient and shared.mime against the emulator's real SMTP relay (aiosmtpd)."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from emulator.directory import demo_directory
from emulator.testing import running_emulator
from shared.errors import AmbiguousOutcome, PermanentError, TransientError
from shared.message import parse_message
from shared.mime import Envelope, smtp_envelope
from shared.settings import Settings
from transport.smtp import SmtpRelayClient

T = TypeVar("T")
SENDER = "no-reply@platform.example"


def _settings(emu: Any, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(smtp_host=emu.smtp_host, smtp_port=emu.smtp_port, smtp_security=emu.smtp_security,
                                  ca_bundle=emu.ca_path, smtp_timeout_s=10.0)
    values.update(overrides)
    return Settings(**values)


def _envelope(i: int = 0, **message: Any) -> Envelope:
    data = {"to": [f"user{i}@example.org"], "subject": f"Hello {i}", "body": "Hi", **message}
    return smtp_envelope(parse_message(data), sender_address=SENDER, sender_name="Platform", reply_to=None,
                         notification_id=f"n{i}")


def _with_client(settings: Settings, scenario: Callable[[SmtpRelayClient], Awaitable[T]], **kw: Any) -> T:
    async def main() -> T:
        client = SmtpRelayClient(settings, **kw)
        try:
            return await scenario(client)
        finally:
            await client.close()
    return asyncio.run(main())


def test_relay_client_reuses_one_connection_for_consecutive_messages(emulator: Any) -> None:
    async def scenario(client: SmtpRelayClient) -> list[int]:
        return [(await client.send(_envelope(i))).code for i in range(5)]

    codes = _with_client(_settings(emulator), scenario)

    assert codes == [250] * 5
    assert emulator.smtp_counters()["connections"] == 1
    messages = emulator.smtp_messages()
    assert [m["notification_id"] for m in messages] == [f"n{i}" for i in range(5)]
    assert all(m["tls"] and m["connection"] == messages[0]["connection"] for m in messages)


def test_relay_client_never_opens_more_connections_than_its_pool(emulator: Any) -> None:
    async def scenario(client: SmtpRelayClient) -> int:
        results = await asyncio.gather(*(client.send(_envelope(i)) for i in range(12)))
        assert {r.code for r in results} == {250}
        return client.connections_opened

    opened = _with_client(_settings(emulator), scenario, pool_size=3)

    assert 1 <= opened <= 3
    assert emulator.smtp_counters()["connections"] == opened
    assert len(emulator.smtp_messages()) == 12


def test_relay_client_replaces_a_connection_the_relay_closed_while_idle(emulator: Any) -> None:
    async def scenario(client: SmtpRelayClient) -> int:
        await client.send(_envelope(1))
        assert await asyncio.to_thread(emulator.smtp_disconnect) == 1
        await client.send(_envelope(2))
        return client.connections_opened

    assert _with_client(_settings(emulator), scenario) == 2
    assert [m["notification_id"] for m in emulator.smtp_messages()] == ["n1", "n2"]


@pytest.mark.parametrize(("fault", "error", "code"), [
    ({"stage": "mail", "reply": "421 4.3.2 Service shutting down"}, TransientError, "SMTP421"),
    ({"stage": "rcpt", "reply": "451 4.7.1 Greylisted, try again"}, TransientError, "SMTP451"),
    ({"stage": "rcpt", "reply": "550 5.1.1 No such user"}, PermanentError, "SMTP550"),
    ({"stage": "data", "reply": "554 5.7.1 Message rejected as spam"}, PermanentError, "SMTP554"),
    ({"stage": "data", "kind": "drop_after_data"}, AmbiguousOutcome, "ConnectionReset"),
])
def test_relay_replies_map_to_the_error_tree(emulator: Any, fault: dict[str, Any], error: type[Exception],
                                             code: str) -> None:
    emulator.add_smtp_fault(count=1, **fault)

    async def scenario(client: SmtpRelayClient) -> tuple[Exception, int]:
        with pytest.raises(error) as info:
            await client.send(_envelope(1))
        after = await client.send(_envelope(2))  # the client recovers for the next message
        return info.value, after.code

    exc, next_code = _with_client(_settings(emulator), scenario)

    assert getattr(exc, "code", None) == code and next_code == 250
    if code.startswith("SMTP"):
        assert getattr(exc, "status", None) == int(code[4:]) and fault["reply"][4:] in str(exc)
    dropped = [m for m in emulator.smtp_messages() if m["dropped"]]
    assert len(dropped) == (1 if code == "ConnectionReset" else 0)  # the ambiguous one did reach the relay


def test_some_recipients_refused_still_sends_to_the_others(emulator: Any) -> None:
    emulator.add_smtp_fault(stage="rcpt", recipient="gone@example.org", reply="550 5.1.1 No such user")

    result = _with_client(_settings(emulator), lambda c: c.send(
        _envelope(1, cc=["gone@example.org"], bcc=["audit@example.org"])))

    assert result.code == 250 and list(result.refused) == ["gone@example.org"]
    assert emulator.smtp_messages()[0]["rcpt_tos"] == ["user1@example.org", "audit@example.org"]


def test_relay_connection_refused_is_transient() -> None:
    settings = Settings(smtp_host="127.0.0.1", smtp_port=1, smtp_security="none", smtp_timeout_s=5.0)

    async def scenario(client: SmtpRelayClient) -> None:
        await client.send(_envelope())

    with pytest.raises(TransientError) as info:
        _with_client(settings, scenario)
    assert info.value.code == "ConnectionRefused"


def test_relay_auth_and_implicit_tls() -> None:
    with running_emulator(directory=demo_directory(), smtp_security="tls",
                          smtp_credentials={"platform": "relay-pass"}) as emu:
        ok = _with_client(_settings(emu, smtp_username="platform", smtp_password="relay-pass"),
                          lambda c: c.send(_envelope(1)))
        with pytest.raises(PermanentError) as wrong:
            _with_client(_settings(emu, smtp_username="platform", smtp_password="nope"), lambda c: c.send(_envelope(2)))
        with pytest.raises(PermanentError) as missing:
            _with_client(_settings(emu), lambda c: c.send(_envelope(3)))

        assert ok.code == 250 and emu.smtp_security == "tls"
        assert emu.smtp_messages()[0]["auth_user"] == "platform" and emu.smtp_messages()[0]["tls"]
        assert wrong.value.code == "SMTP535" and missing.value.code == "SMTP530"
        assert len(emu.smtp_messages()) == 1


def test_mime_keeps_headers_recipients_reply_to_body_and_attachments(emulator: Any) -> None:
    pdf = base64.b64encode(b"%PDF-1.4 fake").decode()
    envelope = smtp_envelope(parse_message({
        "to": [{"address": "ana@example.org", "name": "Ana Núñez"}], "cc": ["cc@example.org"],
        "bcc": ["hidden@example.org"], "reply_to": ["help@example.org"], "subject": "Révision due",
        "body": "<p>Hi <img src='cid:logo1'></p>", "body_type": "html", "importance": "high",
        "headers": {"X-Review-Id": "AR-1"},
        "attachments": [{"name": "r.pdf", "content_type": "application/pdf", "content_bytes": pdf},
                        {"name": "logo.png", "content_type": "image/png", "content_bytes": pdf, "is_inline": True,
                         "content_id": "logo1"}]}),
        sender_address=SENDER, sender_name="Platform Notifications", reply_to="ignored@example.org",
        notification_id="n-42")

    _with_client(_settings(emulator), lambda c: c.send(envelope))

    got = emulator.smtp_messages()[0]
    assert got["mail_from"] == SENDER and got["rcpt_tos"] == ["ana@example.org", "cc@example.org",
                                                             "hidden@example.org"]
    parsed = email.message_from_string(got["data"], policy=email.policy.default)
    assert parsed["From"] == "Platform Notifications <no-reply@platform.example>"
    assert parsed["To"] == "Ana Núñez <ana@example.org>" and parsed["Cc"] == "cc@example.org"
    assert "Bcc" not in parsed and "hidden@example.org" not in got["data"]
    assert parsed["Reply-To"] == "help@example.org" and parsed["Subject"] == "Révision due"
    assert parsed["X-Tenantmail-Notification-Id"] == "n-42" and parsed["X-Review-Id"] == "AR-1"
    assert parsed["Message-ID"] == envelope.message_id and envelope.message_id.endswith("@platform.example>")
    assert parsed["Importance"] == "high"
    assert parsed.get_body(("html",)).get_content().startswith("<p>Hi")
    files = {p.get_filename(): p for p in parsed.iter_attachments()}
    assert files["r.pdf"].get_content() == b"%PDF-1.4 fake"
    related = [p for p in parsed.walk() if p["Content-ID"] == "<logo1>"]
    assert len(related) == 1 and related[0].get_content_type() == "image/png"
