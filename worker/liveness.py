"""Liveness judged by progress, not by the process being up.

Each long-running process (worker, dispatcher, beat) rewrites a small heartbeat file under
`state_dir/health/` while it is doing its job. A worker counts as live when its event loop answers
and, if it holds batches, some notification reached an outcome within `liveness_stall_s`; an idle
worker is live. The dispatcher is live while its loop goes round; beat while its scheduler ticks.
`tenantmail health ROLE` (the containers' health check) fails when a running process of that role
has not been live for `--max-age` seconds, and says why.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.metrics import metrics

ROLES = ("worker", "dispatcher", "beat")


def health_dir(state_dir: Path) -> Path:
    """Where heartbeat files live (one per process and role)."""
    return state_dir / "health"


class Heartbeat:
    """One process's heartbeat file for one role; writes at most once per `min_interval_s`."""

    def __init__(self, state_dir: Path, role: str, *, min_interval_s: float = 1.0) -> None:
        self.path = health_dir(state_dir) / f"{role}-{os.getpid()}.json"
        self._role = role
        self._min_interval_s = min_interval_s
        self._last_write = 0.0
        self._healthy_at = time.time()

    def beat(self, *, healthy: bool = True, reason: str = "", **detail: Any) -> None:
        """Record this moment as live (or, with healthy=False, keep the last live moment and say why)."""
        now = time.time()
        if healthy:
            self._healthy_at = now
            if now - self._last_write < self._min_interval_s:
                return
        self._last_write = now
        record = {"role": self._role, "pid": os.getpid(), "host": socket.gethostname(),
                  "healthy_at": self._healthy_at, "written_at": now, "reason": reason, **detail}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.path)  # atomic: a reader never sees half a file

    def remove(self) -> None:
        """Forget this process (clean shutdown)."""
        self.path.unlink(missing_ok=True)


class Progress:
    """What a worker process is doing: batches held and the last time a notification got an outcome."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.batches = 0
        self.last_outcome_at = time.time()

    def batch_started(self) -> None:
        with self._lock:
            if self.batches == 0:
                self.last_outcome_at = time.time()  # the stall clock starts with the work
            self.batches += 1

    def batch_finished(self) -> None:
        with self._lock:
            self.batches -= 1
            self.last_outcome_at = time.time()

    def outcome(self) -> None:
        """A notification of a batch reached an outcome (sent, failed, rescheduled...)."""
        self.last_outcome_at = time.time()

    def stalled_for_s(self, now: float) -> float:
        """Seconds without an outcome while holding batches (0 when idle)."""
        with self._lock:
            return now - self.last_outcome_at if self.batches else 0.0


progress = Progress()


def watch_worker(heartbeat: Heartbeat, probe_loop: Callable[[], bool], stall_s: float, interval_s: float,
                 stop: threading.Event) -> None:
    """The worker's watchdog thread: beats while the loop answers and batches make progress."""
    while not stop.wait(interval_s):
        now = time.time()
        stalled = progress.stalled_for_s(now)
        if not probe_loop():
            heartbeat.beat(healthy=False, reason="the event loop did not answer", batches=progress.batches)
        elif stalled > stall_s:
            heartbeat.beat(healthy=False, batches=progress.batches,
                           reason=f"no notification reached an outcome for {stalled:.0f} s "
                                  f"with {progress.batches} batch(es) held")
        else:
            heartbeat.beat(batches=progress.batches)
            metrics.worker_live.set(1)
            continue
        metrics.worker_live.set(0)


@dataclass(frozen=True)
class Verdict:
    """What `tenantmail health ROLE` found."""

    ok: bool
    lines: tuple[str, ...]


def check(state_dir: Path, role: str, max_age_s: float, *, now: float | None = None) -> Verdict:
    """Judge every running process of `role` on this host by its heartbeat file."""
    now = time.time() if now is None else now
    lines: list[str] = []
    ok = True
    found = 0
    for path in sorted(health_dir(state_dir).glob(f"{role}-*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced right now, or left half-written by a crash
        if not _alive(int(record.get("pid", 0))):
            path.unlink(missing_ok=True)  # a process that is gone is not ours to judge
            continue
        found += 1
        age_s = now - float(record["healthy_at"])
        if age_s > max_age_s:
            ok = False
            why = record.get("reason") or "its heartbeat stopped"
            lines.append(f"{role} pid {record['pid']}: not live for {age_s:.0f} s: {why}")
        else:
            lines.append(f"{role} pid {record['pid']}: live ({age_s:.0f} s ago)")
    if not found:
        return Verdict(False, (f"no running {role} has reported under {health_dir(state_dir)} "
                               "(is it started, with the same TENANTMAIL_STATE_DIR?)",))
    return Verdict(ok, tuple(lines))


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
