"""Pieces every pipeline benchmark needs: a private Redis, a fresh database, the emulator as its
own process, tenants configured on both sides, and worker processes. Everything is started here
and cleaned up on exit; nothing is shared with the machine's own Redis or databases."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from cryptography.fernet import Fernet
from sqlalchemy import Engine, func, select

from benchmarks.redis_sentinel import RedisSentinelGroup, sentinel_group
from emulator.demo import client_id_for, demo_directory, make_tenant, tenant_id_for
from emulator.testing import EmulatorProcess
from shared.db import make_engine, migrate
from shared.models import TERMINAL_STATES, Notification
from shared.providers import save_graph_provider
from shared.redis_client import sync_client
from shared.secretbox import SecretBox
from shared.settings import Settings
from tenantmail.embedded import start_redis

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("TENANTMAIL_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
_N = Notification.__table__  # type: ignore[attr-defined]


@dataclass
class Bench:
    """A running stack for one benchmark run."""

    env: dict[str, str]
    settings: Settings
    engine: Engine
    emulator: Any
    tmp: Path
    emulator_pid: int | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sentinel: RedisSentinelGroup | None = None  # when Redis is a Sentinel group rather than one server

    def start_workers(self, n: int, concurrency: int) -> None:
        """Start n worker processes and wait until one of them leads the dispatch."""
        for i in range(len(self.workers), len(self.workers) + n):
            log = open(self.tmp / f"worker{i}.log", "wb")
            self.workers.append(subprocess.Popen(
                [sys.executable, "-m", "tenantmail", "worker", f"--concurrency={concurrency}",
                 f"--hostname=bench{i}@%h"], env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT))
        r = sync_client(self.env["REDIS_URL"])
        deadline = time.monotonic() + 60
        while not r.exists("tm:dispatcher:leader"):
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not start:\n" + self.logs())
            time.sleep(0.1)

    def logs(self) -> str:
        """Worker output."""
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.tmp.glob("worker*.log")))

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
        deadline = time.monotonic() + timeout_s
        while self.terminal_count() < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.terminal_count()}/{count} finished\n" + self.logs())
            time.sleep(0.25)

    def terminal_count(self) -> int:
        """How many notifications are in a terminal state."""
        with self.engine.connect() as conn:
            return int(conn.scalar(select(func.count()).where(_N.c.state.in_(TERMINAL_STATES))) or 0)


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
        redis_url = group.url if group else _private_redis(stack, tmp / "redis")
        db_url = stack.enter_context(_database(database, tmp, pg_admin_url))
        directory = demo_directory()
        directory["tenants"] += [make_tenant(i) for i in range(tenants)]
        extra = ["--token-lifetime-s", str(token_lifetime_s)] if token_lifetime_s else []
        emu_proc = EmulatorProcess(directory=directory, latency_ms=latency_ms, extra_args=extra, seed=seed)
        emu = stack.enter_context(emu_proc)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTMAIL_")}
        env.update({
            "DATABASE_URL": db_url, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT),
            "TENANTMAIL_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            "TENANTMAIL_AUTHORITY_OVERRIDE": emu.base_url, "TENANTMAIL_GRAPH_BASE_OVERRIDE": emu.graph_base_url,
            "TENANTMAIL_CA_BUNDLE": str(emu.ca_path), "TENANTMAIL_LOG_LEVEL": "WARNING",
            "TENANTMAIL_STATE_DIR": str(tmp / "state"),
        })
        env.update(extra_env or {})
        settings = Settings(database_url=db_url, redis_url=redis_url,
                            encryption_keys=env["TENANTMAIL_ENCRYPTION_KEYS"])
        engine = make_engine(settings)
        box = SecretBox.from_settings(settings)
        for i in range(tenants):
            spec = directory["tenants"][2 + i]
            save_graph_provider(engine, box, f"t{i}", sender_address=spec["mailboxes"][0]["address"],
                                azure_tenant=tenant_id_for(i), client_id=client_id_for(i),
                                client_secret=spec["apps"][0]["secrets"][0]["value"])
        bench = Bench(env, settings, engine, emu, tmp, emu_proc.process.pid if emu_proc.process else None,
                      sentinel=group)
        try:
            yield bench
        finally:
            for p in bench.workers:
                p.terminate()
            for p in bench.workers:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
            engine.dispose()


def _private_redis(stack: ExitStack, state_dir: Path) -> str:
    url, proc = start_redis(state_dir)
    stack.callback(proc.wait)  # callbacks run last in, first out: terminate, then wait
    stack.callback(proc.terminate)
    return url


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
