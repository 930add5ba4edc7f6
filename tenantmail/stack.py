"""The process stack: `tenantmail` processes started as children against one database, one Redis and
(optionally) the emulator. The demo, the tests and the benchmarks all run their workers through it, so
the way a worker is started, told to stop and waited for is the same everywhere.

`stack_env` builds a child's environment; `ProcessStack` starts worker and API processes with it, reads
their logs, and waits for notifications to reach a final state.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine, func, select

from shared.db import make_engine
from shared.models import TERMINAL_STATES, Notification
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
_N = Notification.__table__  # type: ignore[attr-defined]


class EmulatorEndpoints(Protocol):
    """What a stack needs to know of a running emulator (in-thread or its own process)."""

    @property
    def base_url(self) -> str: ...

    @property
    def graph_base_url(self) -> str: ...

    @property
    def ca_path(self) -> str | Path | None: ...


def stack_env(*, database_url: str | None, redis_url: str, state_dir: Path, emulator: EmulatorEndpoints | None = None,
              smtp: Mapping[str, str] | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A child process's environment: this process's, minus any TENANTMAIL_ setting, plus the stack's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTMAIL_")}
    env.update({"REDIS_URL": redis_url, "TENANTMAIL_STATE_DIR": str(state_dir.resolve())})
    if database_url:
        env["DATABASE_URL"] = database_url
    if emulator is not None:
        env.update({"TENANTMAIL_CA_BUNDLE": str(emulator.ca_path)} if emulator.ca_path else {})
        env.update({"TENANTMAIL_AUTHORITY_OVERRIDE": emulator.base_url,
                    "TENANTMAIL_GRAPH_BASE_OVERRIDE": emulator.graph_base_url})
    env.update(smtp or {})
    env.update(extra or {})
    return env


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """The Settings a child started with `env` builds for itself."""
    values: dict[str, Any] = {k.removeprefix("TENANTMAIL_").lower(): v for k, v in env.items()
                              if k.startswith("TENANTMAIL_")}
    return Settings(**values, database_url=env.get("DATABASE_URL"), redis_url=env["REDIS_URL"])


def wait_until(predicate: Callable[[], Any], *, timeout_s: float = 30.0, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; AssertionError naming `what` after the timeout."""
    deadline = time.monotonic() + timeout_s
    pause = 0.01
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(pause)
        pause = min(pause * 1.5, 0.2)


def stop_process(proc: subprocess.Popen[bytes], *, grace_s: float = 20.0) -> None:
    """SIGTERM, then SIGKILL after the grace period; reaps the process."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class ProcessStack:
    """Child `tenantmail` processes sharing one environment; their output goes to files in `log_dir`."""

    env: dict[str, str]
    log_dir: Path
    settings: Settings = field(init=False)
    engine: Engine = field(init=False)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.settings = settings_from_env(self.env)
        self.engine = make_engine(self.settings)

    def start(self, name: str, *args: str, inherit_output: bool = False) -> subprocess.Popen[bytes]:
        """Start `tenantmail <args>`; its output goes to `<log_dir>/<name>.log` (or this terminal)."""
        cmd = [sys.executable, "-m", "tenantmail", *args]
        if inherit_output:
            proc = subprocess.Popen(cmd, env=self.env, cwd=ROOT)
        else:
            with open(self.log_dir / f"{name}.log", "wb") as log:
                proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.procs.append(proc)
        return proc

    def start_workers(self, n: int = 1, *, concurrency: int = 8, dispatcher: bool = True,
                      metrics_port: int | None = None, hostname: str = "w",
                      inherit_output: bool = False) -> list[subprocess.Popen[bytes]]:
        """Launch n worker processes (each with a standby dispatcher unless told otherwise)."""
        started = []
        for _ in range(n):
            i = len(self.workers())
            args = ["worker", f"--concurrency={concurrency}", f"--hostname={hostname}{i}@%h"]
            args += [f"--metrics-port={metrics_port}"] if metrics_port else []
            args += [] if dispatcher else ["--no-dispatcher"]
            started.append(self.start(f"worker{i}", *args, inherit_output=inherit_output))
        return started

    def workers(self) -> list[subprocess.Popen[bytes]]:
        """The worker processes started so far."""
        return [p for p in self.procs if isinstance(p.args, list) and "worker" in p.args]

    def stop(self) -> None:
        """Stop every process (SIGTERM to all, then wait; SIGKILL whatever outlives the grace)."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            stop_process(p, grace_s=15)
        self.engine.dispose()

    def logs(self, pattern: str = "worker*.log", tail_chars: int | None = None) -> str:
        """The processes' output so far (for failure messages and secret scans)."""
        texts = (f.read_text(errors="replace") for f in sorted(self.log_dir.glob(pattern)))
        return "\n".join(t[-tail_chars:] if tail_chars else t for t in texts)

    def states(self, ids: Iterable[str]) -> dict[str, str]:
        """Current state of each notification."""
        with self.engine.connect() as conn:
            return dict(conn.execute(select(_N.c.id, _N.c.state).where(_N.c.id.in_(list(ids)))).all())

    def terminal_count(self) -> int:
        """How many notifications are in a final state."""
        with self.engine.connect() as conn:
            return int(conn.scalar(select(func.count()).where(_N.c.state.in_(TERMINAL_STATES))) or 0)

    def wait_terminal(self, ids: list[str], timeout_s: float = 60.0,
                      settled: tuple[str, ...] = TERMINAL_STATES) -> dict[str, str]:
        """Wait until every notification is in a `settled` state (by default sent, failed or ambiguous);
        returns their states."""
        def done() -> dict[str, str] | None:
            dead = [p for p in self.workers() if p.poll() is not None]
            if dead and len(dead) == len(self.workers()):
                raise AssertionError(f"every worker exited\n{self.logs(tail_chars=4000)}")
            states = self.states(ids)
            return states if len(states) == len(ids) and all(s in settled for s in states.values()) else None
        try:
            return wait_until(done, timeout_s=timeout_s, what=f"{len(ids)} notifications to finish")  # type: ignore[no-any-return]
        except AssertionError as exc:
            if "every worker exited" in str(exc):
                raise
            states = self.states(ids)
            raise AssertionError(f"not terminal: {sorted(set(states.values()))}\n{self.logs()[-4000:]}") from None
