"""Every benchmark scenario runs at its smallest size and produces its figures (their size is not judged here)."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from benchmarks import cli

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

EXPECTED = {
    "throughput": ["msgs_per_s", "p50_s", "p95_s", "p99_s", "worker_cpu_s_per_1000_msgs", "worker_peak_rss_mb_max",
                   "wire_msgs_per_s", "peer_msgs_per_s", "peer_best_concurrency", "ratio_to_wire", "ratio_to_peer",
                   "peer_cached_msgs_per_s", "peer_card_msgs_per_s", "ratio_to_peer_cached", "ratio_to_peer_card",
                   "ratio_to_best_peer"],
    "fairness": ["small_p95_s", "small_p50_s", "big_sent_meanwhile"],
    "tokens": ["token_requests", "ideal_tenants_x_lifetimes", "ideal_with_refresh_margin",
               "token_requests_over_ideal"],
    "throttle": ["max_mailbox_concurrency", "throttled_429", "requests_inside_retry_after",
                 "requests_in_flight_at_429"],
    "enqueue": ["notifications_per_s"],
    "latency": ["overhead_p50_ms", "overhead_p95_ms", "overhead_p99_ms", "sent"],
    "control_plane": ["msgs_per_s", "pg_cpu_ms_per_msg", "pg_wal_bytes_per_msg", "worker_cpu_ms_per_msg"],
    "http_enqueue": ["batch_notifications_per_s", "single_posts_per_s", "single_p50_ms", "single_p99_ms", "errors"],
    "quota": ["sent", "waited_quota", "sent_over_limit", "ndrs", "failed", "max_recipients_in_window"],
    "scale": [f"w{n}_{k}" for n in (1, 2) for k in ("msgs_per_s", "worker_cpu_ms_per_msg", "pg_cpu_ms_per_msg",
                                                    "pg_wal_bytes_per_msg", "redis_cpu_ms_per_msg",
                                                    "redis_commands_per_msg")],
}


@pytest.mark.parametrize("scenario", cli.SCENARIOS)
def test_bench_scenario_small_writes_figures(scenario, pg_database, tmp_path, capsys):
    # given the smallest size and one repetition
    args = argparse.Namespace(scenario=scenario, reps=1, small=True, out=tmp_path, big_tenant_messages=None)

    # when the scenario runs
    assert cli.run(args) == 0

    # then JSON and markdown are written, and every expected figure is a number with median/min/max
    [json_path] = tmp_path.glob("bench-*.json")
    [md_path] = tmp_path.glob("bench-*.md")
    result = json.loads(json_path.read_text())
    summary = result["scenarios"][scenario]["summary"]
    for figure in EXPECTED[scenario]:
        stats = summary[figure]
        assert set(stats) == {"median", "min", "max"}
        assert isinstance(stats["median"], int | float) and not math.isnan(stats["median"]), figure
    assert result["machine"]["versions"]["celery"] != "absent"
    assert f"| {scenario} | {EXPECTED[scenario][0]} |" in md_path.read_text()
    assert f"| {scenario} |" in capsys.readouterr().out


def test_bench_all_is_every_scenario():
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)

    args = parser.parse_args(["all", "--small"])

    assert args.scenario == "all" and args.reps == 3 and args.small
    assert cli.SCENARIOS == ("throughput", "fairness", "tokens", "throttle", "enqueue", "latency", "http_enqueue",
                              "control_plane", "quota", "scale")


def test_profile_summary_counts_our_functions_inclusively_and_packages_by_innermost_frame(tmp_path):
    from benchmarks.profile_workers import summarize

    raw = tmp_path / "worker0.txt"
    raw.write_text(
        "Sender._lane (worker/delivery.py:191);GraphClient.call (transport/graph.py:84);"
        "ClientResponse.read (aiohttp/client_reqrep.py:902) 3\n"
        "Sender._lane (worker/delivery.py:191);Connection.wait (psycopg/connection.py:495) 1\n"
        "garbage line without a count\n")

    text = summarize([raw])

    assert "4 samples" in text
    assert "| `worker/delivery.py:Sender._lane` | 100.0 % |" in text
    assert "| `transport/graph.py:GraphClient.call` | 75.0 % |" in text
    assert "| aiohttp | 75.0 % |" in text and "| psycopg | 25.0 % |" in text
