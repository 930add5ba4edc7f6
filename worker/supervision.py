"""Supervision of background loops: none of them may die silently.

The dispatcher (with its sweeper), the worker's liveness watchdog and beat's scheduler each run in a loop
that a process keeps alive for its whole life. An exception out of such a loop used to end its thread while
the process went on, alive and idle. Here it is logged, the loop is started again after a backoff (the same
full-jitter curve as delivery retries), and the role's heartbeat says it is failing and why, so
`tenantmail health ROLE` reports it once it has lasted longer than the check's `--max-age`. The dispatcher
retries a failed tick itself at its usual pace (1 s) and reports it with `report_failure`; its supervisor catches
what escapes the loop (its heartbeat file, for one).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from shared.settings import Settings
from worker.liveness import Heartbeat
from worker.retry_policy import compute_backoff

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Backoff:
    """How long to wait before restarting a failed loop: full jitter, doubling from `base_ms` up to `cap_ms`."""

    base_ms: int = 500
    cap_ms: int = 15_000

    @classmethod
    def from_settings(cls, settings: Settings) -> Backoff:
        return cls(settings.loop_restart_base_ms, settings.loop_restart_cap_ms)

    def delay_s(self, failures: int) -> float:
        return compute_backoff(failures, base_ms=self.base_ms, cap_ms=self.cap_ms) / 1000


def report_failure(heartbeat: Heartbeat | None, name: str, exc: BaseException, failures: int) -> None:
    """Log a loop's failure and mark its role not healthy (the heartbeat keeps its last live moment)."""
    log.error("loop.failed", loop=name, failures=failures, error=type(exc).__name__, exc_info=exc)
    if heartbeat is None:
        return
    try:
        heartbeat.beat(healthy=False, reason=f"the {name} loop failed {failures} time(s) in a row, last with "
                                             f"{type(exc).__name__}; see the process's log")
    except OSError:
        log.error("loop.unreported", loop=name, path=str(heartbeat.path), exc_info=True)


def supervise(name: str, loop: Callable[[], None], *, stop: threading.Event, heartbeat: Heartbeat | None = None,
              backoff: Backoff = Backoff()) -> None:
    """Run `loop` until it returns (it was told to stop) or `stop` is set; restart it after each exception."""
    failures = 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            loop()
            return
        except Exception as exc:  # the top boundary of a background loop: log, report, restart
            # A loop that ran well for longer than the longest backoff starts its count again.
            failures = 1 if time.monotonic() - started > backoff.cap_ms / 1000 else failures + 1
            report_failure(heartbeat, name, exc, failures)
            stop.wait(backoff.delay_s(failures))


def start_supervised(name: str, loop: Callable[[], None], *, stop: threading.Event,
                     heartbeat: Heartbeat | None = None, backoff: Backoff = Backoff()) -> threading.Thread:
    """`supervise(...)` on a daemon thread named `tm-<name>`."""
    thread = threading.Thread(target=supervise, name=f"tm-{name}", daemon=True, args=(name, loop),
                              kwargs={"stop": stop, "heartbeat": heartbeat, "backoff": backoff})
    thread.start()
    return thread
