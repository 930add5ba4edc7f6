"""shared.redis_client: one URL, a server or a Sentinel group, for every client and the broker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection

from benchmarks.redis_sentinel import RedisSentinelGroup, sentinel_group
from shared.errors import ConfigurationError
from shared.redis_client import async_client, celery_broker, describe, parse_sentinel_url, sync_client

URL = "sentinel://:s3cret@10.0.0.1:26379;sentinel://10.0.0.2/3?master_name=mymaster"


def test_a_sentinel_url_names_its_sentinels_group_database_and_password() -> None:
    group = parse_sentinel_url(URL)
    assert group.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379))
    assert (group.master_name, group.db, group.password) == ("mymaster", 3, "s3cret")
    assert "s3cret" not in describe(URL) and "mymaster" in describe(URL)
    assert describe("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"


@pytest.mark.parametrize(("url", "complaint"), [
    ("sentinel://h:26379", "master_name"),
    ("sentinel://h:26379;redis://h2:6379?master_name=m", "each ;-separated part"),
    ("sentinel://h:26379/x?master_name=m", "must be a number"),
    ("sentinel://h:26379?master_name=m&colour=red", "colour"),
])
def test_a_malformed_sentinel_url_is_a_configuration_error(url: str, complaint: str) -> None:
    with pytest.raises(ConfigurationError, match=complaint):
        parse_sentinel_url(url)


def test_celery_gets_kombus_sentinel_form_with_the_group_name_as_a_transport_option() -> None:
    broker, options = celery_broker(URL)
    assert options == {"master_name": "mymaster"}
    assert broker == "sentinel://:s3cret@10.0.0.1:26379/3;sentinel://:s3cret@10.0.0.2:26379/3"
    conn = Connection(broker, transport_options=options)
    assert conn.transport_cls == "sentinel" and conn.virtual_host == "3" and conn.password == "s3cret"
    assert celery_broker("redis://h:6379/0") == ("redis://h:6379/0", {})


@pytest.fixture
def group(tmp_path: Path) -> Iterator[RedisSentinelGroup]:
    with sentinel_group(tmp_path / "sentinel") as started:
        yield started


@pytest.mark.timeout(180)
def test_clients_follow_a_failover_without_being_rebuilt(group: RedisSentinelGroup) -> None:
    # given: a sync client and a pooled asyncio client of the group, each with a connection open
    sync, loop = sync_client(group.url), asyncio.new_event_loop()
    pooled = async_client(group.url, max_connections=4, wait_for_connection_s=5)
    try:
        sync.set("k", "before")
        assert loop.run_until_complete(pooled.get("k")) == b"before"

        # when: the master is killed and the sentinels promote the replica
        failover = group.fail_over()

        # then: the same clients read what was replicated and write to the new master
        assert sync.get("k") == b"before"
        assert loop.run_until_complete(pooled.set("k", "after"))
        assert int(sync.info("server")["tcp_port"]) == failover["new_master_port"] == group.master_port
        assert sync.get("k") == b"after"
    finally:
        sync.close()
        loop.run_until_complete(pooled.aclose())
        loop.close()
