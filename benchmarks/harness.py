"""Pieces every pipeline benchmark needs: a private Redis, a fresh database, the emulator as its
own process, tenants configured on both sides, and worker processes. Everything is started here
and cleaned up on exit; nothing is shared with the machine's own Redis or databases."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis
from cryptography.fernet import Fernet
from sqlalchemy import Engine

from benchmarks.redis_sentinel import RedisSentinelGroup, sentinel_group
from emulator.demo import client_id_for, demo_directory, make_tenant, tenant_id_for
from emulator.testing import EmulatorProcess
from shared.db import migrate
from shared.providers import save_graph_provider
from shared.redis_client import sync_client
from shared.secretbox import SecretBox
from shared.settings import Settings
from tenantmail.embedded import start_redis
from tenantmail.stack import ROOT, ProcessStack, stack_env, wait_until

PG_ADMIN_URL = os.environ.get("TENANTMAIL_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass
class Bench:
    """A running stack for one benchmark run: the application's process stack plus the emulator."""

    procs: ProcessStack
    emulator: Any
    emulator_pid: int | None = None
    sentinel: RedisSentinelGroup | None = None  # when Redis is a Sentinel group rather than one server
    redis: PrivateRedis | None = None  # the one server otherwise

    @property
    def env(self) -> dict[str, str]:
        return self.procs.env

    @property
    def settings(self) -> Settings:
        return self.procs.settings

    @property
    def engine(self) -> Engine:
        return self.procs.engine

    @property
    def tmp(self) -> Path:
        return self.procs.log_dir

    @property
    def workers(self) -> list[subprocess.Popen[bytes]]:
        """The worker processes (the stack's own list: clearing it forgets them)."""
        return self.procs.procs

    def start_workers(self, n: int, concurrency: int) -> None:
        """Start n worker processes and wait until one of them leads the dispatch."""
        self.procs.start_workers(n, concurrency=concurrency, hostname="bench")
        r = sync_client(self.env["REDIS_URL"])
        try:
            wait_until(lambda: r.exists("tm:dispatcher:leader"), timeout_s=60, what="a dispatcher leader")
        except AssertionError:
            raise RuntimeError("workers did not start:\n" + self.logs()) from None

    def logs(self) -> str:
        """Worker output."""
        return self.procs.logs(tail_chars=3000)

    def worker_cpu_s(self) -> float:
        """User+system CPU seconds used so far by the worker processes (from /proc)."""
        return sum(_cpu_s(p.pid) for p in self.workers)

    def cpu_by_role_s(self) -> dict[str, float]:
        """CPU seconds so far of the workers, the emulator, PostgreSQL and Redis on this machine."""
        roles = {"workers": self.worker_cpu_s(), "emulator": _cpu_s(self.emulator_pid),
                 "postgres": 0.0, "redis": 0.0}
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    comm = (proc / "comm").read_text().strip()
                except OSError:
                    continue
                if comm in ("postgres", "redis-server"):
                    roles["postgres" if comm == "postgres" else "redis"] += _cpu_s(int(proc.name))
        return roles

    def worker_rss_mb(self) -> list[float]:
        """Peak resident set size of each worker process (VmHWM), in MB."""
        out = []
        for p in self.workers:
            for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out.append(int(line.split()[1]) / 1024)
        return out

    def wait_terminal(self, count: int, timeout_s: float) -> None:
        """Wait until `count` notifications are terminal."""
        try:
            wait_until(lambda: self.terminal_count() >= count, timeout_s=timeout_s, what=f"{count} to finish")
        except AssertionError:
            raise RuntimeError(f"only {self.terminal_count()}/{count} finished\n" + self.logs()) from None

    def terminal_count(self) -> int:
        """How many notifications are in a terminal state."""
        return self.procs.terminal_count()


def _cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def bench_stack(*, tenants: int, latency_ms: float, database: str = "postgres",
                extra_env: dict[str, str] | None = None, token_lifetime_s: int | None = None,
                pg_admin_url: str = PG_ADMIN_URL, seed: int | None = None,
                sentinel: bool = False) -> Iterator[Bench]:
    """Start Redis, a fresh database, the emulator with `tenants` tenants, and configure them.

    `pg_admin_url` is the PostgreSQL server that gets the fresh database; `seed` makes the
    emulator's ids and fault rolls repeat; `sentinel` runs Redis as a Sentinel group (a master, a
    replica, three sentinels) instead of one server."""
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tm-bench-")))
        group = stack.enter_context(sentinel_group(tmp / "redis")) if sentinel else None
        private = None if group else stack.enter_context(_private_redis(tmp / "redis"))
        redis_url = group.url if group else private.url  # type: ignore[union-attr]
        db_url = stack.enter_context(_database(database, tmp, pg_admin_url))
        directory = demo_directory()
        directory["tenants"] += [make_tenant(i) for i in range(tenants)]
        extra = ["--token-lifetime-s", str(token_lifetime_s)] if token_lifetime_s else []
        emu_proc = EmulatorProcess(directory=directory, latency_ms=latency_ms, extra_args=extra, seed=seed)
        emu = stack.enter_context(emu_proc)
        env = stack_env(database_url=db_url, redis_url=redis_url, state_dir=tmp / "state", emulator=emu, extra={
            "PYTHONPATH": str(ROOT), "TENANTMAIL_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            "TENANTMAIL_LOG_LEVEL": "WARNING", **(extra_env or {})})
        procs = ProcessStack(env, tmp)
        stack.callback(procs.stop)
        box = SecretBox.from_settings(procs.settings)
        for i in range(tenants):
            spec = directory["tenants"][2 + i]
            save_graph_provider(procs.engine, box, f"t{i}", sender_address=spec["mailboxes"][0]["address"],
                                azure_tenant=tenant_id_for(i), client_id=client_id_for(i),
                                client_secret=spec["apps"][0]["secrets"][0]["value"])
        yield Bench(procs, emu, emu_proc.process.pid if emu_proc.process else None, sentinel=group, redis=private)


class PrivateRedis:
    """A run's own redis-server, which can be stopped (its data saved, not flushed) and started again."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.url, self.proc = start_redis(state_dir)
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])

    def stop_and_start(self, down_s: float) -> float:
        """SHUTDOWN SAVE (every client is cut; the data goes to dump.rdb), stay down `down_s`, start it
        again on the same port with that data; returns how long it was down."""
        t0 = time.monotonic()
        client = sync_client(self.url)
        try:
            client.shutdown(save=True)
        except redis.ConnectionError:  # the server closes the connection it would answer on
            pass
        finally:
            client.close()
        self.proc.wait(timeout=30)
        time.sleep(max(0.0, t0 + down_s - time.monotonic()))
        _, self.proc = start_redis(self.state_dir, port=self.port)
        return time.monotonic() - t0

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@contextmanager
def _private_redis(state_dir: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(state_dir)
    try:
        yield server
    finally:
        server.close()


@contextmanager
def _database(kind: str, tmp: Path, admin_url: str = PG_ADMIN_URL) -> Iterator[str]:
    if kind == "sqlite":
        url = f"sqlite:///{tmp / 'bench.db'}"
        migrate(Settings(database_url=url))
        yield url
        return
    name = f"tm_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        migrate(Settings(database_url=url))
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def message(i: int) -> dict[str, Any]:
    """A small notification like the platform's."""
    return {"to": [f"user{i % 997}@example.org"], "subject": f"Access review {i} is due",
            "body": "<p>Please complete your access review before Friday.</p>", "body_type": "html"}
