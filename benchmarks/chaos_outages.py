"""The outages of `tenantmail chaos --outages` (issue 13), on top of the kills, flush and restart.

    revoke_secret      at 10%: tenant t1's client secret is replaced in the emulator's directory and Graph
                       rejects its token once (401), so the worker asks Entra ID again and meets
                       AADSTS7000215: the tenant's queue is held
    fix_secret         `secret_fix_after_s` later: a provider version with the new secret is saved (the fix)
    graph_outage_*     from 20%, for `graph_outage_s`: every sendMail answers 503 (the sparse fault mix steps
                       aside), longer than the old attempt budget of about two minutes at full size
    token_outage_*     from 32%, for `token_outage_s`: the token endpoint answers 503 (right after the FLUSHALL
                       has dropped Redis's cached tokens, and around a kill whose replacement has none)
    stop_redis         at 52% (not with --sentinel): SHUTDOWN SAVE, down `redis_down_s`, started again with its data
    sigstop            at 70%: a worker with sends in flight is SIGSTOPped past its send lease, then resumed:
                       the sweeper fences its rows off, and it must send none of them again

What it measures for the checks: the sendMail requests that reached the emulator while the Graph breaker
was open (at most one probe per interval may go out), and the held tenant's notifications.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from emulator.demo import client_id_for, tenant_id_for
from shared.providers import save_graph_provider
from shared.secretbox import SecretBox
from worker.breakers import STATE_KEY

if TYPE_CHECKING:
    from benchmarks.chaos import ChaosRun, ChaosSize

HELD_TENANT_INDEX = 1
HELD_TENANT = f"t{HELD_TENANT_INDEX}"
NEW_SECRET = "rotated-secret-of-t1"
PROBE_GRACE_S = 2.0  # sends already past their gate when the breaker opened are not probes


def outage_schedule(size: ChaosSize) -> list[tuple[float, str]]:
    """(seconds after the start, event) of the outages."""
    d = size.duration_s
    events = [(0.10 * d, "revoke_secret"), (0.10 * d + size.secret_fix_after_s, "fix_secret"),
              (0.20 * d, "graph_outage_start"), (0.20 * d + size.graph_outage_s, "graph_outage_end"),
              (0.32 * d, "token_outage_start"), (0.32 * d + size.token_outage_s, "token_outage_end"),
              (0.70 * d, "sigstop")]
    if not size.sentinel:
        events.append((0.52 * d, "stop_redis"))
    return [(round(at, 3), name) for at, name in events]


class Outages:
    """The outage events of one run (methods named as in the schedule) and what they leave to check."""

    def __init__(self, run: ChaosRun, send_lease_s: float) -> None:
        self._stop_s = send_lease_s + 3.0  # past the lease and the sweeper's next round
        self.run = run
        self.control = run.bench.emulator.control
        self._fault_ids: dict[str, str] = {}
        self._stopped: int | None = None
        self._threads: list[threading.Thread] = []
        self.graph_window: tuple[float, float] | None = None

    def revoke_secret(self) -> None:
        directory = self.control.get_directory()
        tenant = next(t for t in directory["tenants"] if t["id"] == tenant_id_for(HELD_TENANT_INDEX))
        tenant["apps"][0]["secrets"] = [{"id": "s2", "value": NEW_SECRET, "expires_at": "2099-01-01T00:00:00Z"}]
        self.control.set_directory(directory)
        # Graph refuses the token it holds once, as after a revocation, so the worker must ask Entra ID again.
        self.control.add_fault(route="sendMail", kind="status", status=401, code="InvalidAuthenticationToken",
                               tenant=tenant_id_for(HELD_TENANT_INDEX), count=1)
        self.run.events.append({"event": "revoke_secret", "at_s": self.run.elapsed(), "tenant": HELD_TENANT})

    def fix_secret(self) -> None:
        bench = self.run.bench
        held = self.run.held_count(HELD_TENANT)
        version = save_graph_provider(
            bench.engine, SecretBox.from_settings(bench.settings), HELD_TENANT,
            sender_address=f"sender0@tenant{HELD_TENANT_INDEX}.example", azure_tenant=tenant_id_for(HELD_TENANT_INDEX),
            client_id=client_id_for(HELD_TENANT_INDEX), client_secret=NEW_SECRET)
        self.run.events.append({"event": "fix_secret", "at_s": self.run.elapsed(), "version": version,
                                "held_at_fix": held})

    def graph_outage_start(self) -> None:
        self.run.pause_fault_mix()  # every sendMail answers 503 while it lasts
        self._fault_ids["graph"] = self.control.add_fault(route="sendMail", kind="503")
        self.graph_window = (time.time(), 0.0)
        self.run.events.append({"event": "graph_outage_start", "at_s": self.run.elapsed()})

    def graph_outage_end(self) -> None:
        opened = self._open_since_ms("graph:")
        self.control.remove_fault(self._fault_ids.pop("graph"))
        self.run.resume_fault_mix()
        start, _ = self.graph_window or (time.time(), 0.0)
        self.graph_window = (start, time.time())
        self.run.events.append({"event": "graph_outage_end", "at_s": self.run.elapsed(),
                                **self._probe_counts(opened)})

    def token_outage_start(self) -> None:
        self._fault_ids["token"] = self.control.add_fault(route="token", kind="503")
        self.run.events.append({"event": "token_outage_start", "at_s": self.run.elapsed()})

    def token_outage_end(self) -> None:
        self.control.remove_fault(self._fault_ids.pop("token"))
        self.run.events.append({"event": "token_outage_end", "at_s": self.run.elapsed(),
                                "token_requests_refused": self._refused_token_requests()})

    def stop_redis(self) -> None:
        """On a thread: the schedule goes on while Redis is down."""
        redis_server = self.run.bench.redis
        assert redis_server is not None
        at = self.run.elapsed()

        def stop() -> None:
            down_s = redis_server.stop_and_start(self.run.size.redis_down_s)
            self.run.events.append({"event": "stop_redis", "at_s": at, "down_s": round(down_s, 2)})

        thread = threading.Thread(target=stop, name="chaos-redis-stop", daemon=True)
        thread.start()
        self._threads.append(thread)

    def sigstop(self) -> None:
        victim = next(p for p in self.run.bench.workers if p.poll() is None)
        in_flight = self.run.wait_in_flight(victim.pid, timeout_s=20)
        os.kill(victim.pid, signal.SIGSTOP)
        self._stopped = victim.pid
        self.run.events.append({"event": "sigstop", "at_s": self.run.elapsed(), "pid": victim.pid, **in_flight})
        timer = threading.Timer(self._stop_s, self.sigcont)  # the schedule goes on while it is stopped
        timer.start()
        self._threads.append(timer)

    def sigcont(self) -> None:
        pid, self._stopped = self._stopped, None
        if pid is not None:
            os.kill(pid, signal.SIGCONT)
            self.run.events.append({"event": "sigcont", "at_s": self.run.elapsed(), "pid": pid})

    def finish(self) -> None:
        """Wait for threads still running an outage; resume a worker left stopped."""
        for thread in self._threads:
            thread.join(timeout=120)
        self.sigcont()

    def _open_since_ms(self, prefix: str) -> int | None:
        """When the breaker of the scope starting with `prefix` last opened (None: not open)."""
        try:
            states = self.run.redis.hgetall(STATE_KEY)
        except Exception:  # Redis may be the one down at this moment: then no figure
            return None
        decoded = {_text(k): _text(v) for k, v in states.items()}
        opened = [int(v.split(":")[1]) for k, v in decoded.items() if k.startswith(prefix) and v.startswith("open:")]
        return min(opened) if opened else None

    def _probe_counts(self, opened_ms: int | None) -> dict[str, Any]:
        """sendMail requests that started while the Graph breaker was open (past the grace), against one
        per probe interval."""
        if opened_ms is None:
            return {"breaker_open_s": None, "requests_while_open": None, "probes_allowed": None, "probe_excess": 0}
        since = opened_ms / 1000 + PROBE_GRACE_S
        now = time.time()
        started = [e["time"] - e.get("duration_ms", 0) / 1000 for e in self.control.requests_log(route="sendMail")]
        during = sum(since <= t <= now for t in started)
        interval_s = self.run.breaker_interval_s()
        allowed = int(max(0.0, now - since) // interval_s) + 1
        return {"breaker_open_s": round(now - opened_ms / 1000, 1), "requests_while_open": during,
                "probes_allowed": allowed, "probe_excess": max(0, during - allowed)}

    def _refused_token_requests(self) -> int:
        return sum(1 for e in self.control.requests_log(route="token") if e.get("status") == 503)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def held_tenant_evidence(outbox_ids: list[str | None], rows: dict[str, tuple[str, bool]]) -> dict[str, int]:
    """The held tenant's notifications: how many, and how many not sent exactly once (a flagged
    duplicate of a 504 after commit excepted)."""
    copies = Counter(outbox_ids)
    bad = sum(1 for nid, (state, flagged) in rows.items()
              if state != "sent" or copies[nid] == 0 or (copies[nid] > 1 and not flagged))
    return {"held_tenant_notifications": len(rows), "held_tenant_not_sent_once": bad}
