"""The Procfile is a real way to run tenantmail: honcho starts its processes and a notification goes
through end to end."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests
import yaml

from emulator.demo import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_SENDER, DEMO_TENANT_ID
from shared.providers import save_graph_provider
from tenantmail.embedded import free_port
from tests.stack import ROOT, wait_until

PROCESSES = ["api", "worker", "beat"]


def _get(url: str) -> requests.Response | None:
    try:
        return requests.get(url, timeout=2)
    except requests.ConnectionError:
        return None


def test_procfile_lines_name_tenantmail_commands() -> None:
    lines = [ln for ln in (ROOT / "Procfile").read_text().splitlines() if ln and not ln.startswith("#")]
    names = {ln.split(":", 1)[0] for ln in lines}
    assert {"api", "worker", "beat", "emulator"} <= names
    assert all(re.match(r"^\w+: tenantmail \w+", ln) for ln in lines)


def _health(env: dict[str, str], cwd: Path, role: str) -> subprocess.CompletedProcess[str] | None:
    done = subprocess.run(["tenantmail", "health", role], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=60)
    return done if done.returncode == 0 else None


def test_compose_gives_every_long_running_service_a_health_check_the_cli_knows() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    long_running = {name: svc for name, svc in services.items() if name != "migrate"}
    assert {"postgres", "redis", "api", "worker", "dispatcher", "beat", "emulator"} <= set(long_running)
    for name, svc in long_running.items():
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no health check"
    for role in ("worker", "dispatcher", "beat"):
        assert services[role]["healthcheck"]["test"][1:4] == ["tenantmail", "health", role]
    parser_roles = subprocess.run([sys.executable, "-m", "tenantmail", "health", "--help"], capture_output=True,
                                  text=True, cwd=ROOT, check=True).stdout
    assert "{worker,dispatcher,beat}" in parser_roles


def test_honcho_runs_the_procfile_and_a_notification_is_sent(make_stack: Any, emulator: Any, tmp_path: Path) -> None:
    # given the stack's settings in the environment and the venv's `tenantmail` on PATH
    stack = make_stack()
    save_graph_provider(stack.engine, stack.box, "acme", sender_address=DEMO_SENDER, azure_tenant=DEMO_TENANT_ID,
                        client_id=DEMO_CLIENT_ID, client_secret=DEMO_CLIENT_SECRET)
    env = {**stack.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "WORKER_CONCURRENCY": "4", "PORT": str(api_port := free_port())}
    log = open(tmp_path / "honcho.log", "wb")
    honcho = subprocess.Popen([str(Path(sys.executable).parent / "honcho"), "start", "-f", str(ROOT / "Procfile"),
                               *PROCESSES], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        # when a notification is enqueued
        nid = stack.producer.enqueue("acme", {"to": ["ana@example.org"], "subject": "Through the Procfile"})

        # then the Procfile's worker sends it
        try:
            assert stack.wait_terminal([nid], timeout_s=60)[nid] == "sent"
        except AssertionError:
            raise AssertionError((tmp_path / "honcho.log").read_text()[-3000:]) from None
        assert [m["x_headers"]["X-Tenantmail-Notification-Id"] for m in emulator.outbox()] == [nid]
        # and the Procfile's API answers
        health = wait_until(lambda: _get(f"http://127.0.0.1:{api_port}/healthz"), what="the API")
        assert health.status_code == 200
        # and the health checks the containers use pass for the Procfile's worker and beat
        for role in ("worker", "beat"):
            check = wait_until(lambda r=role: _health(env, tmp_path, r), what=f"`tenantmail health {role}`")
            assert "live" in check.stdout
    finally:
        honcho.send_signal(signal.SIGTERM)
        honcho.wait(timeout=60)
        log.close()
