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

from emulator.demo import client_id_for, make_tenant, tenant_id_for
from shared.models import Notification

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
    """Busy CPU seconds of the whole machine between start and stop, from /proc/stat."""

    def __init__(self) -> None:
        self.load_1m_start = os.getloadavg()[0]
        self._busy0, self._t0 = _busy_s(), time.monotonic()

    def figures(self) -> dict[str, float]:
        """loadavg at start and average busy cores over the interval (the machine has os.cpu_count())."""
        elapsed = time.monotonic() - self._t0
        return {"machine_load_1m_at_start": round(self.load_1m_start, 2),
                "machine_busy_cores": round((_busy_s() - self._busy0) / elapsed, 2) if elapsed else 0.0}


def _busy_s() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
