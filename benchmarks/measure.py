"""Small measuring helpers shared by the scenarios: percentiles, rows since a time, machine load."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from benchmarks.harness import _cpu_s
from emulator.demo import client_id_for, make_tenant, tenant_id_for
from shared.models import Notification
from shared.redis_client import sync_client

_N = Notification.__table__  # type: ignore[attr-defined]


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (inclusive method); the only value when there is one; NaN for none."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(sorted(values), n=100, method="inclusive")[int(p) - 1]


def rows_since(engine: Engine, t0: float) -> list[Any]:
    """Notifications created at or after epoch `t0`: tenant, state, created/sent/updated times."""
    with engine.connect() as conn:
        return list(conn.execute(select(_N.c.tenant_id, _N.c.state, _N.c.created_at, _N.c.sent_at, _N.c.updated_at)
                                 .where(_N.c.created_at >= datetime.fromtimestamp(t0, UTC))).all())


def waits_s(rows: list[Any]) -> list[float]:
    """enqueue -> accepted (sent_at - created_at) of the rows that were sent, sorted."""
    return sorted(r.sent_at.timestamp() - r.created_at.timestamp() for r in rows if r.sent_at)


def wait_until(condition: Callable[[], bool], *, timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    """Poll `condition` until true; RuntimeError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def tenant_credentials(index: int) -> dict[str, str]:
    """The emulator-side identity of bench tenant `index` (as harness.bench_stack configures it)."""
    spec = make_tenant(index)
    return {"tenant_id": tenant_id_for(index), "client_id": client_id_for(index),
            "secret": spec["apps"][0]["secrets"][0]["value"], "sender": spec["mailboxes"][0]["address"]}


class MachineLoad:
    """Busy CPU seconds of the whole machine between start and `figures()`, from /proc/stat, and how
    much of it was this run's own processes (when `own_cpu_s` says how to count them)."""

    def __init__(self, own_cpu_s: Callable[[], float] | None = None) -> None:
        self.load_1m_start = os.getloadavg()[0]
        self._own = own_cpu_s
        self._own0 = own_cpu_s() if own_cpu_s else 0.0
        self._busy0, self._t0 = _busy_s(), time.monotonic()

    def figures(self) -> dict[str, float]:
        """loadavg at start, busy cores over the interval, and the busy cores not ours (PostgreSQL, a
        server shared with others, counts as not ours)."""
        elapsed = time.monotonic() - self._t0
        busy = (_busy_s() - self._busy0) / elapsed if elapsed else 0.0
        out = {"machine_load_1m_at_start": round(self.load_1m_start, 2), "machine_busy_cores": round(busy, 2)}
        if self._own and elapsed:
            out["busy_cores_not_ours"] = round(max(0.0, busy - (self._own() - self._own0) / elapsed), 2)
        return out


def own_cpu_s(bench: Any) -> Callable[[], float]:
    """CPU seconds of this process, the bench's workers, its emulator and its private redis-server."""
    redis_pid = int(sync_client(bench.env["REDIS_URL"]).info("server")["process_id"])
    return lambda: sum(_cpu_s(pid) for pid in (os.getpid(), bench.emulator_pid, redis_pid)) + bench.worker_cpu_s()


def _busy_s() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
