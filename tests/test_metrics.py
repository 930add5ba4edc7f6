"""Prometheus metrics of a worker, scraped over HTTP after real sends."""

from __future__ import annotations

from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from emulator.demo import DEMO_CEO, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_SENDER, DEMO_TENANT_ID
from shared.providers import save_graph_provider
from tenantmail.embedded import free_port
from tests.stack import wait_until


def _samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _samples_when_up(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    try:
        return _samples(port)
    except requests.ConnectionError:
        return None


def test_metrics_count_what_was_sent_and_refused(make_stack: Any, emulator: Any) -> None:
    # given one tenant that can send and one whose sender the Access Policy blocks
    stack = make_stack()
    for tenant, sender in (("ok", DEMO_SENDER), ("blocked", DEMO_CEO)):
        save_graph_provider(stack.engine, stack.box, tenant, sender_address=sender, azure_tenant=DEMO_TENANT_ID,
                            client_id=DEMO_CLIENT_ID, client_secret=DEMO_CLIENT_SECRET)
    ids = [stack.producer.enqueue("ok", {"to": [f"u{i}@example.org"], "subject": "hi"}) for i in range(9)]
    ids.append(stack.producer.enqueue("blocked", {"to": ["x@example.org"], "subject": "hi"}))
    port = free_port()

    # when a worker delivers them
    stack.start_workers(1, metrics_port=port)
    stack.wait_terminal(ids[:-1])
    wait_until(lambda: stack.states(ids[-1:]) == {ids[-1]: "held"}, what="the blocked tenant's row held")

    # then its /metrics agrees with the activity table and the emulator
    samples = wait_until(lambda: _samples(port), what="the metrics endpoint")
    assert samples[("tenantmail_graph_sends_total", (("code", ""), ("outcome", "sent")))] == 9
    assert samples[("tenantmail_graph_sends_total", (("code", "ErrorAccessDenied"), ("outcome", "failed")))] == 1
    assert samples[("tenantmail_notifications_total", (("state", "sent"),))] == 9
    assert samples[("tenantmail_notifications_total", (("state", "held"),))] == 1
    assert samples[("tenantmail_graph_latency_seconds_count", ())] == 10
    assert samples[("tenantmail_token_lookups_total", (("source", "entra"),))] == 2  # one per tenant config
    assert len(emulator.outbox()) == 9


def test_metrics_count_platform_relay_sends_apart_from_graph(make_stack: Any, emulator: Any) -> None:
    # given a tenant on the platform default, and a relay that refuses one recipient for good
    stack = make_stack()
    emulator.add_smtp_fault(stage="rcpt", recipient="gone@example.org", reply="550 5.1.1 No such user")
    ids = [stack.producer.enqueue("fabrikam", {"to": [f"u{i}@example.org"], "subject": "hi"}) for i in range(4)]
    ids.append(stack.producer.enqueue("fabrikam", {"to": ["gone@example.org"], "subject": "hi"}))
    port = free_port()

    # when a worker delivers them
    stack.start_workers(1, metrics_port=port)
    stack.wait_terminal(ids)

    # then the SMTP counter has them and the Graph counter does not
    samples = wait_until(lambda: _samples(port), what="the metrics endpoint")
    assert samples[("tenantmail_smtp_sends_total", (("code", "SMTP250"), ("outcome", "sent")))] == 4
    assert samples[("tenantmail_smtp_sends_total", (("code", "SMTP550"), ("outcome", "failed")))] == 1
    assert not any(name == "tenantmail_graph_sends_total" for name, _ in samples)
    assert len(emulator.smtp_messages()) == 4


def test_worker_exports_the_same_queue_gauges_as_the_api(make_stack: Any) -> None:
    # given three notifications queued and no dispatcher to publish them
    stack = make_stack()
    for i in range(3):
        stack.producer.enqueue("acme", {"to": [f"u{i}@example.org"], "subject": "hi"})
    port = free_port()

    # when a worker without a dispatcher serves its metrics
    stack.start_workers(1, dispatcher=False, metrics_port=port)

    # then its queue depth, read from the database at scrape time, is labelled by state like the API's
    samples = wait_until(lambda: _samples_when_up(port), what="the metrics endpoint")
    assert samples[("tenantmail_queue_depth", (("state", "queued"),))] == 3
    assert samples[("tenantmail_queue_depth", (("state", "sending"),))] == 0
    assert samples[("tenantmail_oldest_queued_age_seconds", ())] > 0
