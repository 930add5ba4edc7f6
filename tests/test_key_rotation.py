"""`tenantmail secrets rotate` with real processes, Redis, both databases and the emulator."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
from cryptography.fernet import Fernet
from sqlalchemy import insert, select

from emulator.demo import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_SENDER, DEMO_TENANT_ID
from emulator.testing import make_certificate
from shared.certificates import parse_certificate_pem
from shared.models import ProviderConfig, WebhookEndpoint
from shared.providers import save_graph_provider
from shared.secretbox import SecretBox
from tenantmail.rotation import rewrite_credential
from tests.secret_scan import scan
from tests.stack import ROOT, Stack, new_encryption_key

_P = ProviderConfig.__table__  # type: ignore[attr-defined]
_W = WebhookEndpoint.__table__  # type: ignore[attr-defined]


def rotate(stack: Stack, keys: str) -> subprocess.CompletedProcess[str]:
    """Run `tenantmail secrets rotate` as its own process with these keys."""
    env = {**stack.env, "TENANTMAIL_ENCRYPTION_KEYS": keys}
    return subprocess.run([sys.executable, "-m", "tenantmail", "secrets", "rotate"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def stored(stack: Stack) -> dict[tuple[str, int], bytes]:
    """Every stored ciphertext by (tenant, version)."""
    with stack.engine.connect() as conn:
        rows = conn.execute(select(_P.c.tenant_id, _P.c.version, _P.c.secret_enc)
                            .where(_P.c.secret_enc.is_not(None))).all()
    return {(t, v): bytes(blob) for t, v, blob in rows}


def add_webhook_endpoint(stack: Stack, tenant: str, secret: str, previous: str, box: SecretBox | None = None) -> None:
    """An endpoint in a signing-secret rotation's grace: both secrets stored, encrypted (by `box`, else the stack's)."""
    box = box or stack.box
    now = datetime.now(UTC)
    with stack.engine.begin() as conn:
        conn.execute(insert(_W).values(id=f"ep_{tenant}", tenant_id=tenant, url="https://hooks.example.org/tm",
                                       event_types=["notification.sent"], secret_enc=box.encrypt(secret),
                                       previous_secret_enc=box.encrypt(previous), created_at=now,
                                       updated_at=now))


def webhook_secrets(stack: Stack) -> dict[str, tuple[bytes, bytes]]:
    with stack.engine.connect() as conn:
        rows = conn.execute(select(_W.c.id, _W.c.secret_enc, _W.c.previous_secret_enc)).all()
    return {endpoint: (bytes(secret), bytes(previous)) for endpoint, secret, previous in rows}


def cached_tokens(stack: Stack) -> dict[bytes, bytes]:
    client = redis.Redis.from_url(stack.env["REDIS_URL"])
    return {key: client.get(key) or b"" for key in client.scan_iter(match="tm:tok:*")}


def deliver_one(stack: Stack, tenant: str) -> str:
    nid = stack.producer.enqueue(tenant, {"to": ["someone@example.org"], "subject": "hi"})
    stack.start_workers(1)
    assert stack.wait_terminal([nid]) == {nid: "sent"}, stack.logs()[-3000:]
    stack.stop()
    return nid


def test_rotate_then_drop_the_old_key_still_sends_and_history_decrypts(
    make_stack: Callable[..., Stack], emulator: Any
) -> None:
    # given a tenant whose version 1 is a client secret and version 2 a certificate, and a
    # platform-default tenant, all under the old key, and a token cached in Redis by a delivery
    old_key, new_key = new_encryption_key(), new_encryption_key()
    before = make_stack(TENANTMAIL_ENCRYPTION_KEYS=old_key)
    key_pem, cert_pem = make_certificate(valid_days=200)
    emulator.add_certificate(DEMO_TENANT_ID, DEMO_CLIENT_ID, cert_pem)
    common = {"sender_address": DEMO_SENDER, "azure_tenant": DEMO_TENANT_ID, "client_id": DEMO_CLIENT_ID}
    save_graph_provider(before.engine, before.box, "acme", client_secret=DEMO_CLIENT_SECRET, **common)
    save_graph_provider(before.engine, before.box, "acme", certificate=parse_certificate_pem(key_pem + cert_pem),
                        **common)
    deliver_one(before, "acme")
    assert len(cached_tokens(before)) == 1
    add_webhook_endpoint(before, "acme", "whsec_newsigning", "whsec_oldsigning")

    # when rotate runs with the new key first, and again
    first = rotate(before, f"{new_key},{old_key}")
    after_first = stored(before), cached_tokens(before), webhook_secrets(before)
    second = rotate(before, f"{new_key},{old_key}")

    # then both versions, both webhook secrets and the token were re-encrypted once, and the second run
    # changed nothing
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["credentials: 2 re-encrypted, 0 already under the newest key",
                                         "webhook secrets: 2 re-encrypted, 0 already under the newest key",
                                         "tokens: 1 re-encrypted, 0 already under the newest key"]
    assert second.stdout.splitlines() == ["credentials: 0 re-encrypted, 2 already under the newest key",
                                          "webhook secrets: 0 re-encrypted, 2 already under the newest key",
                                          "tokens: 0 re-encrypted, 1 already under the newest key"]
    assert (stored(before), cached_tokens(before), webhook_secrets(before)) == after_first
    assert not scan({"output": (first.stdout + first.stderr).encode()},
                    {"client secret": DEMO_CLIENT_SECRET, "private key": key_pem, "old key": old_key,
                     "webhook secret": "whsec_newsigning"})

    # and with the old key removed, every version decrypts and a worker still delivers
    after = make_stack(TENANTMAIL_ENCRYPTION_KEYS=new_key)
    new_only = SecretBox([new_key])
    assert new_only.decrypt(stored(after)[("acme", 1)]) == DEMO_CLIENT_SECRET
    assert new_only.decrypt(stored(after)[("acme", 2)]).startswith(key_pem.strip())
    assert all(new_only.opens(blob) for blob in cached_tokens(after).values())
    secret, previous = webhook_secrets(after)["ep_acme"]
    assert (new_only.decrypt(secret), new_only.decrypt(previous)) == ("whsec_newsigning", "whsec_oldsigning")
    sent_before = len(emulator.outbox())
    deliver_one(after, "acme")
    assert len(emulator.outbox()) == sent_before + 1


def test_rotate_refuses_a_credential_no_key_opens_and_changes_nothing(
    make_stack: Callable[..., Stack], emulator: Any
) -> None:
    # given one tenant under the configured key and one under a key nobody configured
    stack = make_stack()
    foreign = SecretBox([Fernet.generate_key().decode()])
    common = {"sender_address": DEMO_SENDER, "azure_tenant": DEMO_TENANT_ID, "client_id": DEMO_CLIENT_ID}
    save_graph_provider(stack.engine, stack.box, "acme", client_secret=DEMO_CLIENT_SECRET, **common)
    save_graph_provider(stack.engine, foreign, "contoso", client_secret=DEMO_CLIENT_SECRET, **common)
    deliver_one(stack, "acme")
    add_webhook_endpoint(stack, "acme", "whsec_a", "whsec_b")
    add_webhook_endpoint(stack, "contoso", "whsec_c", "whsec_d", box=foreign)
    snapshot = stored(stack), cached_tokens(stack), webhook_secrets(stack)

    # when rotate runs with a new key first
    result = rotate(stack, f"{new_encryption_key()},{stack.env['TENANTMAIL_ENCRYPTION_KEYS']}")

    # then it fails naming the tenant and version, and nothing was rewritten, in the database or Redis
    assert result.returncode == 1
    assert "tenant contoso version 1" in result.stderr and "nothing was re-encrypted" in result.stderr
    assert "tenant contoso webhook endpoint ep_contoso" in result.stderr
    assert "acme" not in result.stderr
    assert (stored(stack), cached_tokens(stack), webhook_secrets(stack)) == snapshot
    assert not scan({"output": (result.stdout + result.stderr).encode()}, {"client secret": DEMO_CLIENT_SECRET})


def test_a_credential_saved_meanwhile_is_never_overwritten(make_stack: Callable[..., Stack]) -> None:
    # given a row whose ciphertext changed after rotate read it
    stack = make_stack()
    save_graph_provider(stack.engine, stack.box, "acme", client_secret=DEMO_CLIENT_SECRET,
                        sender_address=DEMO_SENDER, azure_tenant=DEMO_TENANT_ID, client_id=DEMO_CLIENT_ID)
    with stack.engine.connect() as conn:
        row_id, current = conn.execute(select(_P.c.id, _P.c.secret_enc)).one()
    read_earlier = stack.box.encrypt(DEMO_CLIENT_SECRET)

    # when rotate writes its re-encryption of what it read
    written = rewrite_credential(stack.engine, row_id, read_earlier, stack.box.rotate(read_earlier))

    # then the row keeps what was saved meanwhile
    assert written is False
    assert stored(stack)[("acme", 1)] == bytes(current)
