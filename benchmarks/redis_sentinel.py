"""A Redis Sentinel group on loopback for the chaos run and the tests: a master, a replica and three
sentinels (quorum 2), each its own redis-server process (`redis-server CONF --sentinel` is what
Debian's redis-sentinel runs). `fail_over()` SIGKILLs the master and waits until the sentinels have
promoted the replica; clients built from `url` (shared.redis_client) follow on their own."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import redis

from tenantmail.embedded import free_port, redis_server_binary

MASTER_NAME = "tmmaster"
DOWN_AFTER_MS = 1000  # how long the master must be silent before the sentinels act
T = TypeVar("T")
_SERVER_ARGS = ("--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction")


@dataclass
class RedisSentinelGroup:
    """The running processes of one group and the URL that names it."""

    tmp: Path
    master_port: int = 0
    replica_port: int = 0
    sentinel_ports: list[int] = field(default_factory=list)
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The REDIS_URL of the group (shared.redis_client's Sentinel form)."""
        hosts = ";".join(f"sentinel://127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"{hosts}/0?master_name={MASTER_NAME}"

    def start(self, timeout_s: float = 60.0) -> RedisSentinelGroup:
        """Start the master, the replica and the sentinels; wait until a failover could happen."""
        self.master_port, self.replica_port = free_port(), free_port()
        self._server(self.master_port)
        self._server(self.replica_port, "--replicaof", "127.0.0.1", str(self.master_port))
        for _ in range(3):
            port = free_port()
            conf = self.tmp / f"sentinel-{port}.conf"
            conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {self.tmp}\n"
                            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} 2\n"
                            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
                            f"sentinel failover-timeout {MASTER_NAME} 5000\n")
            self._spawn(port, [redis_server_binary(), str(conf), "--sentinel"])
            self.sentinel_ports.append(port)
        _wait(self._ready, timeout_s, "the sentinel group to see its replica and each other")
        return self

    def _server(self, port: int, *extra: str) -> None:
        self._spawn(port, [redis_server_binary(), "--port", str(port), "--dir", str(self.tmp), *_SERVER_ARGS, *extra])

    def _spawn(self, port: int, argv: list[str]) -> None:
        log = open(self.tmp / f"redis-{port}.log", "wb")
        self._logs.append(log)
        self.procs[port] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp)

    def _ready(self) -> bool:
        replica = _ask(self.replica_port, lambda r: r.info("replication")) or {}
        views = [_ask(p, lambda r: r.sentinel_master(MASTER_NAME)) or {} for p in self.sentinel_ports]
        return replica.get("master_link_status") == "up" and all(
            int(v.get("num-slaves", 0)) >= 1 and int(v.get("num-other-sentinels", 0)) >= 2 for v in views)

    def fail_over(self, timeout_s: float = 60.0) -> dict[str, float | int]:
        """SIGKILL the master; wait until every sentinel names the replica as master and it accepts
        writes. Returns the seconds that took and the ports before and after."""
        old, t0 = self.master_port, time.monotonic()
        proc = self.procs.pop(old)
        proc.kill()
        proc.wait(timeout=10)

        def promoted() -> bool:
            role = (_ask(self.replica_port, lambda r: r.info("replication")) or {}).get("role")
            return role == "master" and all(self._names(p, self.replica_port) for p in self.sentinel_ports)

        _wait(promoted, timeout_s, "the sentinels to promote the replica")
        self.master_port, self.replica_port = self.replica_port, old
        return {"promoted_after_s": round(time.monotonic() - t0, 2), "old_master_port": old,
                "new_master_port": self.master_port}

    def _names(self, sentinel_port: int, master_port: int) -> bool:
        addr = _ask(sentinel_port, lambda r: r.sentinel_get_master_addr_by_name(MASTER_NAME))
        return bool(addr) and int(addr[1]) == master_port

    def stop(self) -> None:
        """Stop every process of the group."""
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()
        for log in self._logs:
            log.close()


def _ask(port: int, question: Callable[[redis.Redis], T]) -> T | None:
    """One question to the server on a loopback port; None when it does not answer."""
    with redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2) as client:
        try:
            return question(client)
        except redis.RedisError:
            return None


def _wait(predicate: Callable[[], Any], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


@contextmanager
def sentinel_group(tmp: Path) -> Iterator[RedisSentinelGroup]:
    """A started group whose files live under `tmp`; stopped on exit."""
    tmp.mkdir(parents=True, exist_ok=True)
    group = RedisSentinelGroup(tmp)
    try:
        yield group.start()
    finally:
        group.stop()
