"""No background loop dies silently, and a deployment mistake is one line at start: real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from shared.db import migrate
from shared.settings import Settings
from tests.stack import ROOT, new_encryption_key, wait_until
from worker.liveness import Heartbeat
from worker.supervision import Backoff, supervise

FAST_RESTART = {"TENANTMAIL_LOOP_RESTART_BASE_MS": "20", "TENANTMAIL_LOOP_RESTART_CAP_MS": "200"}


def _tenantmail(env: dict[str, str], *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tenantmail", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def _env(**values: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **values}


def test_supervise_restarts_a_failing_loop_and_reports_it_in_the_heartbeat(tmp_path: Path) -> None:
    # given a loop that fails twice, then runs until told to stop
    calls: list[int] = []
    stop = threading.Event()
    heartbeat = Heartbeat(tmp_path, "dispatcher")

    def loop() -> None:
        calls.append(1)
        if len(calls) <= 2:
            raise RuntimeError("database unreachable")

    # when supervised
    supervise("dispatcher", loop, stop=stop, heartbeat=heartbeat, backoff=Backoff(base_ms=1, cap_ms=5))

    # then it ran three times and the heartbeat says it failed, without the exception's text
    assert len(calls) == 3
    record = json.loads(heartbeat.path.read_text())
    assert "the dispatcher loop failed 2 time(s) in a row, last with RuntimeError" in record["reason"]
    assert "unreachable" not in record["reason"]


def test_dispatcher_whose_ticks_fail_is_reported_not_live_and_recovers(redis_url: str, tmp_path: Path) -> None:
    # given a dispatcher whose database has no schema yet, so that every tick fails
    unmigrated = f"sqlite:///{tmp_path / 'empty.db'}"
    env = _env(DATABASE_URL=unmigrated, REDIS_URL=redis_url, TENANTMAIL_STATE_DIR=str(tmp_path / "state"),
               TENANTMAIL_LIVENESS_INTERVAL_S="0.2", **FAST_RESTART)
    log = open(tmp_path / "dispatcher.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "tenantmail", "dispatcher"], env=env, cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        # then the failures are logged and `tenantmail health dispatcher` fails and says why
        failing = wait_until(lambda: _health(env, ok=False), what="the dispatcher to be reported failing")
        assert "the dispatcher loop failed" in failing.stderr and "OperationalError" in failing.stderr
        assert "loop.failed" in (tmp_path / "dispatcher.log").read_text()

        # when the schema appears, the restarted loop goes round and the dispatcher is live again
        migrate(Settings(database_url=unmigrated))
        live = wait_until(lambda: _health(env, ok=True), what="the dispatcher to be live again")
        assert "live" in live.stdout
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _health(env: dict[str, str], *, ok: bool) -> subprocess.CompletedProcess[str] | None:
    done = _tenantmail(env, "health", "dispatcher", "--max-age=1")
    return done if (done.returncode == 0) is ok and "no running" not in done.stderr else None


def test_worker_without_encryption_keys_stops_with_one_line(pg_database: str, redis_url: str,
                                                            tmp_path: Path) -> None:
    done = _tenantmail(_env(DATABASE_URL=pg_database, REDIS_URL=redis_url,
                            TENANTMAIL_STATE_DIR=str(tmp_path / "state")), "worker")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stderr.strip().splitlines()[-1] == (
        "tenantmail: configuration error: TENANTMAIL_ENCRYPTION_KEYS must be set when DATABASE_URL points at a "
        "shared database")


@pytest.mark.parametrize("command", [["worker"], ["dispatcher"], ["beat"], ["api"], ["migrate"], ["demo"]])
def test_every_process_refuses_a_state_dir_it_cannot_write(command: list[str], tmp_path: Path,
                                                           redis_url: str) -> None:
    # given a state directory that cannot be created (its parent is a file)
    (tmp_path / "file").write_text("")
    state_dir = tmp_path / "file" / "state"
    env = _env(REDIS_URL=redis_url, TENANTMAIL_STATE_DIR=str(state_dir),
               TENANTMAIL_ENCRYPTION_KEYS=new_encryption_key())

    # when the process starts, it stops at once with one line that names the directory and the user
    done = _tenantmail(env, *command)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        f"tenantmail: configuration error: TENANTMAIL_STATE_DIR {state_dir} is not writable by uid "
        f"{os.getuid()} (Not a directory): point TENANTMAIL_STATE_DIR at a directory that user owns (in a container: "
        "a volume)")


def test_health_needs_no_writable_state_dir(tmp_path: Path) -> None:
    done = _tenantmail(_env(TENANTMAIL_STATE_DIR=str(tmp_path / "absent")), "health", "beat")
    assert done.returncode == 1 and "no running beat has reported" in done.stderr

