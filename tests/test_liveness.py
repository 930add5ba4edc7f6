"""Liveness judged by progress: real worker, dispatcher and beat processes, stalled and stopped."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from emulator.demo import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_SENDER, DEMO_TENANT_ID
from shared.providers import save_graph_provider
from tests.stack import ROOT, Stack, wait_until
from worker.liveness import Heartbeat, Verdict, check, health_dir

LIVE = {"TENANTMAIL_LIVENESS_STALL_S": "1", "TENANTMAIL_LIVENESS_INTERVAL_S": "0.2"}
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # liveness is not about the database


def _health_cli(stack: Stack, role: str, max_age_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tenantmail", "health", role, f"--max-age={max_age_s}"],
                          env=stack.env, cwd=ROOT, capture_output=True, text=True, timeout=60)


def _verdict(stack: Stack, role: str, *, ok: bool, max_age_s: float = 1.0) -> Verdict | None:
    verdict = check(stack.settings.state_dir, role, max_age_s)
    return verdict if verdict.ok is ok else None


def _spawn(stack: Stack, *args: str) -> subprocess.Popen[bytes]:
    log = open(stack.log_dir / f"{args[0]}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "tenantmail", *args], env=stack.env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    stack.procs.append(proc)
    return proc


@SQLITE_ONLY
def test_worker_holding_a_stuck_send_is_reported_not_live_until_it_progresses(make_stack: Any,
                                                                              emulator: Any) -> None:
    # given a live, idle worker
    stack = make_stack(**LIVE)
    save_graph_provider(stack.engine, stack.box, "acme", sender_address=DEMO_SENDER, azure_tenant=DEMO_TENANT_ID,
                        client_id=DEMO_CLIENT_ID, client_secret=DEMO_CLIENT_SECRET)
    stack.start_workers(1, dispatcher=True)
    wait_until(lambda: _verdict(stack, "worker", ok=True), what="the worker to report live")

    # when Graph holds its send so that no notification reaches an outcome
    emulator.add_fault(kind="hold", route="sendMail")
    nid = stack.producer.enqueue("acme", {"to": ["a@example.org"], "subject": "held"})

    # then the health check fails and says why (a heartbeat allowed 10 s old: on a loaded machine a 1 s
    # one can also go stale, which is another reason, not this one)
    def stalled_by_the_send() -> Verdict | None:
        verdict = _verdict(stack, "worker", ok=False, max_age_s=10.0)
        return verdict if verdict and "no notification reached an outcome" in "\n".join(verdict.lines) else None
    wait_until(stalled_by_the_send, what="the worker to be judged stalled by its send")
    failed = _health_cli(stack, "worker", 10.0)
    assert failed.returncode == 1 and "not live" in failed.stderr

    # and once the send completes the worker is live again
    emulator.release_held()
    emulator.clear_faults()
    assert stack.wait_terminal([nid])[nid] == "sent"
    wait_until(lambda: _verdict(stack, "worker", ok=True, max_age_s=10.0), what="the worker to report live again")
    passed = _health_cli(stack, "worker", 10.0)
    assert passed.returncode == 0 and "live" in passed.stdout


@SQLITE_ONLY
def test_dispatcher_frozen_by_sigstop_is_not_live_and_a_stopped_one_is_gone(make_stack: Any) -> None:
    # given a running dispatcher process
    stack = make_stack(**LIVE)
    proc = _spawn(stack, "dispatcher")
    wait_until(lambda: _verdict(stack, "dispatcher", ok=True), what="the dispatcher to report live")

    # when it is frozen, its heartbeat goes stale
    proc.send_signal(signal.SIGSTOP)
    try:
        stale = wait_until(lambda: _verdict(stack, "dispatcher", ok=False), what="a stale dispatcher")
        assert "heartbeat stopped" in "\n".join(stale.lines)
    finally:
        proc.send_signal(signal.SIGCONT)
    wait_until(lambda: _verdict(stack, "dispatcher", ok=True), what="the thawed dispatcher to report live")

    # and once it has stopped, no dispatcher is reported at all
    stack.kill(proc, signal.SIGTERM)
    gone = check(stack.settings.state_dir, "dispatcher", 1.0)
    assert not gone.ok and "no running dispatcher" in gone.lines[0]


@SQLITE_ONLY
def test_beat_reports_live_while_its_scheduler_ticks(make_stack: Any) -> None:
    stack = make_stack(**LIVE)
    proc = _spawn(stack, "beat")
    wait_until(lambda: _verdict(stack, "beat", ok=True), what="beat to report live")
    assert _health_cli(stack, "beat", 1.0).returncode == 0
    stack.kill(proc, signal.SIGKILL)
    assert not check(stack.settings.state_dir, "beat", 1.0).ok


def test_heartbeat_of_a_dead_process_is_dropped(tmp_path: Path) -> None:
    # given a heartbeat file left by a process that no longer exists
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                                  capture_output=True, text=True, check=True).stdout)
    left = health_dir(tmp_path) / f"worker-{dead_pid}.json"
    left.parent.mkdir(parents=True)
    left.write_text(json.dumps({"role": "worker", "pid": dead_pid, "healthy_at": time.time(), "reason": ""}))

    # when checked, it is removed and not counted
    verdict = check(tmp_path, "worker", 30)
    assert not verdict.ok and "no running worker" in verdict.lines[0]
    assert not left.exists()

    # while this live process's fresh heartbeat passes
    Heartbeat(tmp_path, "worker").beat()
    assert check(tmp_path, "worker", 30).ok
