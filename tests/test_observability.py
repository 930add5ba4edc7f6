"""The alert rules and the Grafana dashboard against what live processes export, and a real Prometheus.

After a real delivery (Graph, the SMTP relay and a refused token, through the emulator), every metric
name that deploy/grafana/tenantmail.json and deploy/prometheus/alerts.yml query must be exported by a
`tenantmail worker --metrics-port` or the API's /metrics; then a real Prometheus scrapes both and
answers how many notifications were sent.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from emulator.demo import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_SENDER, DEMO_TENANT_ID
from shared.providers import save_graph_provider
from shared.settings import Settings
from tenantmail.embedded import free_port
from tests.api_harness import ApiServer
from tests.stack import ROOT, Stack, wait_until

DASHBOARD = ROOT / "deploy" / "grafana" / "tenantmail.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS_OWN = {"up"}  # series Prometheus makes itself for each target
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool",
             "inf", "nan"}
_SENT = 5  # 3 through Graph, 2 through the platform default's relay


def dashboard_expressions() -> list[str]:
    """Every PromQL expression of the dashboard's panels."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p["targets"]]


def alert_expressions() -> list[str]:
    """Every alert rule's expression."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [str(rule["expr"]) for g in groups for rule in g["rules"]]


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (not functions, keywords, labels or durations)."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        if match.group() not in _KEYWORDS and not expr[match.end():].lstrip().startswith("("):
            names.add(match.group())
    return names


def exported_names(text: str) -> set[str]:
    """Series names a /metrics page exports, including those of labelled metrics with no sample yet."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(s.name for s in family.samples)
    return names


def test_metric_names_are_found_in_promql() -> None:
    expr = ('sum by (code) (rate(a_total{outcome="failed"}[10m])) / ignoring (code) group_left sum(rate(b[5m])) '
            '> 0.05 and histogram_quantile(0.95, sum by (le) (rate(c_bucket[5m]))) - time() < 7 * 86400 or absent(d)')
    assert metric_names(expr) == {"a_total", "b", "c_bucket", "d"}


@pytest.fixture
def delivered(make_stack: Callable[..., Stack], make_api: Callable[[Settings], ApiServer],
              emulator: Any) -> tuple[Stack, ApiServer, int]:
    """A worker (with --metrics-port) and an API after sends through Graph and the relay and a refused token
    (which holds its tenant's notification for the admin)."""
    stack = make_stack()
    common = {"sender_address": DEMO_SENDER, "azure_tenant": DEMO_TENANT_ID, "client_id": DEMO_CLIENT_ID}
    save_graph_provider(stack.engine, stack.box, "acme", client_secret=DEMO_CLIENT_SECRET,
                        secret_expires_at=datetime.now(UTC) + timedelta(days=3), **common)
    save_graph_provider(stack.engine, stack.box, "broken", client_secret="not-the-secret", **common)
    ids = [stack.producer.enqueue(tenant, {"to": [f"u{i}@example.org"], "subject": "hi"})
           for i, tenant in enumerate(["acme"] * 3 + ["fabrikam"] * 2 + ["broken"])]
    port = free_port()
    stack.start_workers(1, metrics_port=port)
    states = stack.wait_terminal(ids, settled=("sent", "failed", "ambiguous", "held"))
    assert sorted(states.values()) == ["held"] + ["sent"] * _SENT
    return stack, make_api(stack.settings), port


def test_dashboard_and_alerts_query_only_metrics_the_processes_export(
    delivered: tuple[Stack, ApiServer, int]
) -> None:
    # given a worker and an API that have seen a delivery
    _, api, worker_port = delivered

    # when both are scraped
    worker = wait_until(lambda: requests.get(f"http://127.0.0.1:{worker_port}/metrics", timeout=5).text,
                        what="the worker's /metrics")
    exported = exported_names(worker) | exported_names(requests.get(f"{api.base_url}/metrics", timeout=10).text)

    # then every name the dashboard and the alerts query is among them
    dashboard = set().union(*map(metric_names, dashboard_expressions()))
    alerts = set().union(*map(metric_names, alert_expressions()))
    assert {"tenantmail_notification_latency_seconds_bucket", "tenantmail_credential_expires_at_seconds",
            "tenantmail_dispatcher_leader", "tenantmail_worker_live"} <= dashboard
    assert dashboard - exported - PROMETHEUS_OWN == set()
    assert alerts - exported - PROMETHEUS_OWN == set()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], str]]:
    """Factory: a real Prometheus on loopback scraping {job: host:port} every second, with our alert rules."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(targets: dict[str, str]) -> str:
        port = free_port()
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "rule_files": [str(ALERTS)],
                  "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                                     for job, target in targets.items()]}
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = open(tmp_path / "prometheus.log", "wb")
        procs.append(subprocess.Popen(
            ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT))
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _ready(url), what="Prometheus to be ready")
        return url

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=30)


def _ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/-/ready", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def query(url: str, promql: str) -> list[dict[str, Any]]:
    """The result vector of an instant query (fails on a query error)."""
    body = requests.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert body["status"] == "success", (promql, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def test_prometheus_scrapes_a_worker_and_the_api_and_counts_what_was_sent(
    delivered: tuple[Stack, ApiServer, int], prometheus: Callable[[dict[str, str]], str]
) -> None:
    # given a worker and an API that have seen a delivery, scraped by a real Prometheus
    _, api, worker_port = delivered
    url = prometheus({"tenantmail-worker": f"127.0.0.1:{worker_port}",
                      "tenantmail-api": api.base_url.removeprefix("http://")})

    # when it has scraped both
    wait_until(lambda: len(query(url, "up == 1")) == 2, what="both targets up")

    # then it counts the notifications sent, sees the leader and the expiring credential,
    # and every dashboard query and alert rule evaluates
    sent = wait_until(lambda: query(url, 'sum(tenantmail_notifications_total{state="sent"})'), what="a sent count")
    print(f"Prometheus answered sum(tenantmail_notifications_total{{state=\"sent\"}}) = {sent[0]['value'][1]}")
    assert float(sent[0]["value"][1]) == _SENT
    assert float(query(url, "sum(tenantmail_dispatcher_leader)")[0]["value"][1]) == 1
    expiring = query(url, "min by (tenant) (tenantmail_credential_expires_at_seconds) - time() < 7 * 86400")
    assert [r["metric"]["tenant"] for r in expiring] == ["acme"]
    for expr in dashboard_expressions():
        query(url, expr)
    rules = wait_until(lambda: _evaluated_rules(url), what="the alert rules to be evaluated")
    assert {r["name"]: r["health"] for r in rules} == {r["name"]: "ok" for r in rules}


def _evaluated_rules(url: str) -> list[dict[str, Any]]:
    groups = requests.get(f"{url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules: list[dict[str, Any]] = [r for g in groups for r in g["rules"]]
    return rules if rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules) else []
