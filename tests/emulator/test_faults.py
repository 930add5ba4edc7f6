"""Injected faults on sendMail: 429 variants, 503 bodies, 504 before/after commit, reset, latency."""

from __future__ import annotations

import pytest
import requests

from emulator.directory import PLATFORM_CLIENT_ID, PLATFORM_SENDER, PLATFORM_TENANT_ID

from .conftest import send


@pytest.fixture
def token(emulator):
    return emulator.mint_token(tid=PLATFORM_TENANT_ID, appid=PLATFORM_CLIENT_ID, roles=["Mail.Send"])


@pytest.mark.parametrize("retry_after", ["2", "2.128", None])
def test_fault_429_retry_after_integer_fraction_or_absent(emulator, http, token, retry_after):
    emulator.add_fault(route="sendMail", kind="429", count=1, retry_after=retry_after)
    response = send(http, emulator, PLATFORM_SENDER, token)
    assert response.status_code == 429
    assert response.headers.get("Retry-After") == retry_after
    assert response.json()["error"]["code"] == "TooManyRequests"
    assert send(http, emulator, PLATFORM_SENDER, token).status_code == 202


def test_fault_429_retry_after_range_draws_a_value_per_response(emulator, http, token):
    emulator.add_fault(route="sendMail", kind="429", count=20, retry_after={"min_s": 1, "max_s": 3})
    values = {float(send(http, emulator, PLATFORM_SENDER, token).headers["Retry-After"]) for _ in range(20)}
    assert all(1.0 <= v <= 3.0 for v in values)
    assert len(values) > 1
    assert emulator.counters()["throttled_429"] == 20


def test_fault_retry_after_range_must_name_min_and_max(emulator):
    with pytest.raises(RuntimeError, match="min_s"):
        emulator.add_fault(route="sendMail", kind="429", retry_after={"low": 1})
    with pytest.raises(RuntimeError, match="min_s <= max_s"):
        emulator.add_fault(route="sendMail", kind="429", retry_after={"min_s": 3, "max_s": 1})


def test_fault_503_json_and_html_bodies(emulator, http, token):
    emulator.add_fault(route="sendMail", kind="503", count=1, body="json")
    emulator.add_fault(route="sendMail", kind="503", count=1, body="html")
    first = send(http, emulator, PLATFORM_SENDER, token)
    second = send(http, emulator, PLATFORM_SENDER, token)
    assert first.status_code == second.status_code == 503
    assert first.json()["error"]["code"] == "ServiceUnavailable"
    assert second.headers["Content-Type"].startswith("text/html")


def test_fault_504_after_commit_puts_message_in_outbox(emulator, http, token):
    emulator.add_fault(route="sendMail", kind="504_after_commit", count=1)
    response = send(http, emulator, PLATFORM_SENDER, token)
    assert response.status_code == 504
    assert len(emulator.outbox()) == 1


def test_fault_504_before_commit_leaves_outbox_empty(emulator, http, token):
    emulator.add_fault(route="sendMail", kind="504", count=1)
    assert send(http, emulator, PLATFORM_SENDER, token).status_code == 504
    assert emulator.outbox() == []


def test_fault_reset_drops_connection(emulator, http, token):
    emulator.add_fault(route="sendMail", kind="reset", count=1)
    with pytest.raises(requests.ConnectionError):
        send(http, emulator, PLATFORM_SENDER, token)
    assert emulator.counters()["reset_connections"] == 1
    assert send(http, emulator, PLATFORM_SENDER, token).status_code == 202


def test_fault_scoped_to_other_mailbox_does_not_fire(emulator, http, token):
    emulator.add_fault(route="sendMail", kind="503", mailbox="someone-else@platform.example")
    assert send(http, emulator, PLATFORM_SENDER, token).status_code == 202


def test_fault_probability_one_always_fires_and_zero_never(emulator, http, token):
    fault_id = emulator.add_fault(route="sendMail", kind="500", probability=1.0)
    assert send(http, emulator, PLATFORM_SENDER, token).status_code == 500
    emulator.remove_fault(fault_id)
    emulator.add_fault(route="sendMail", kind="500", probability=0.0)
    assert send(http, emulator, PLATFORM_SENDER, token).status_code == 202


def test_fault_latency_is_applied(emulator, http, token):
    emulator.add_fault(route="sendMail", kind="latency", count=1, latency_ms={"min_ms": 200, "max_ms": 250})
    response = send(http, emulator, PLATFORM_SENDER, token)
    assert response.status_code == 202
    assert emulator.requests_log(route="sendMail")[-1]["duration_ms"] >= 200


def test_fault_unknown_kind_is_rejected(emulator):
    with pytest.raises(RuntimeError, match="unknown fault kind"):
        emulator.add_fault(route="sendMail", kind="explode")
