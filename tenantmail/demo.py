"""The main command: an embedded stack that sends sample notifications through the emulator.

With no DATABASE_URL / REDIS_URL it runs on SQLite under state_dir and a private redis-server it
starts itself; the emulator plays Entra ID and Graph with the demo tenant (Contoso, whose app an
Application Access Policy scopes to governance@contoso.example), and its local SMTP relay is the
platform default's relay for the no-reply sender. One worker process delivers; the activity table
is printed at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from emulator.demo import (
    DEMO_CEO,
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_SENDER,
    DEMO_TENANT_ID,
    PLATFORM_NO_REPLY,
    demo_directory,
)
from emulator.testing import running_emulator
from shared.activity import recent_activity
from shared.db import make_engine, migrate
from shared.models import TERMINAL_STATES
from shared.producer import Producer
from shared.providers import save_graph_provider
from shared.secretbox import SecretBox
from shared.settings import Settings
from tenantmail.activity_table import format_activity
from tenantmail.embedded import start_redis

SAMPLES: list[tuple[str, dict[str, Any]]] = [
    *[("contoso", {"to": [f"reviewer{i}@contoso.example"], "subject": f"Access review #{i} is due",
                   "body": "<p>Please complete your access review.</p>", "body_type": "html",
                   "headers": {"X-Review-Id": f"AR-{1000 + i}"}}) for i in range(1, 6)],
    ("contoso-ceo", {"to": ["board@contoso.example"], "subject": "Sent from a mailbox outside the policy",
                     "body": "This one is refused with ErrorAccessDenied [RAOP]."}),
    ("fabrikam", {"to": ["it@fabrikam.example"], "subject": "Welcome to the platform",
                  "body": "Sent by the platform's default no-reply sender."}),
]


def run_demo(settings: Settings, *, keep_running: bool = False) -> int:
    """Start the stack, send the samples, print the activity table; returns an exit code."""
    with ExitStack() as stack:
        redis_url = settings.redis_url
        if redis_url is None:
            redis_url, proc = start_redis(settings.state_dir / "redis")
            stack.callback(_stop, proc)
        emu = stack.enter_context(running_emulator(directory=demo_directory()))
        env = _child_env(settings, redis_url, emu)
        settings = Settings(**_settings_from_env(env))
        migrate(settings)
        engine = make_engine(settings)
        _configure_tenants(engine, SecretBox.from_settings(settings))
        worker = stack.enter_context(_worker(env))
        print(f"emulator {emu.base_url}  redis {redis_url}  database {settings.database_url or 'sqlite'}")
        ids = Producer(engine, settings).enqueue_many(SAMPLES)
        print(f"enqueued {len(ids)} notifications; waiting for outcomes ...")
        done = _wait(engine, ids, worker, timeout_s=90)
        rows = [r for r in recent_activity(engine, limit=200) if r["id"] in set(ids)]
        print(format_activity(rows))
        print(f"emulator outbox: {len(emu.outbox())} message(s) accepted by Graph, "
              f"{len(emu.smtp_messages())} by the SMTP relay (platform default)")
        if keep_running:
            _start_api(stack, engine, settings, env)
            print("stack running; Ctrl-C to stop")
            _sleep_forever()
        return 0 if done else 1
    return 1


def _child_env(settings: Settings, redis_url: str, emu: Any) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "REDIS_URL": redis_url,
        "TENANTMAIL_STATE_DIR": str(settings.state_dir.resolve()),
        "TENANTMAIL_AUTHORITY_OVERRIDE": emu.base_url,
        "TENANTMAIL_GRAPH_BASE_OVERRIDE": emu.graph_base_url,
        "TENANTMAIL_CA_BUNDLE": str(emu.ca_path),
        **emu.smtp_settings(),
        "TENANTMAIL_PLATFORM_SENDER": PLATFORM_NO_REPLY,
        "TENANTMAIL_LOG_LEVEL": os.environ.get("TENANTMAIL_LOG_LEVEL", "WARNING"),
    })
    if settings.database_url:
        env["DATABASE_URL"] = settings.database_url
    return env


def _settings_from_env(env: dict[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {k.removeprefix("TENANTMAIL_").lower(): v for k, v in env.items()
                              if k.startswith("TENANTMAIL_")}
    values["redis_url"] = env["REDIS_URL"]
    values["database_url"] = env.get("DATABASE_URL")
    return values


def _configure_tenants(engine: Any, box: SecretBox) -> None:
    common: dict[str, Any] = dict(azure_tenant=DEMO_TENANT_ID, client_id=DEMO_CLIENT_ID,
                                  client_secret=DEMO_CLIENT_SECRET, created_by="demo")
    save_graph_provider(engine, box, "contoso", sender_address=DEMO_SENDER, sender_name="Contoso Governance",
                        reply_to=DEMO_SENDER, **common)
    save_graph_provider(engine, box, "contoso-ceo", sender_address=DEMO_CEO, sender_name="Contoso CEO", **common)
    # "fabrikam" has no configuration: it uses the platform default sender, through the SMTP relay.


def _start_api(stack: ExitStack, engine: Any, settings: Settings, env: dict[str, str]) -> None:
    """The API and admin page as a child process, and an admin key for the demo tenant."""
    from api.keys import create_key

    key = create_key(engine, "contoso", "admin", label="demo")
    proc = subprocess.Popen([sys.executable, "-m", "tenantmail.cli", "api"], env=env,
                            cwd=Path(__file__).resolve().parent.parent)
    stack.callback(_stop, proc)
    print(f"admin page http://{settings.api_host}:{settings.api_port}/ui/login  "
          f"API key (tenant contoso, admin; shown once): {key}")


@contextmanager
def _worker(env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-m", "tenantmail.cli", "worker", "--concurrency=8"], env=env,
                            cwd=Path(__file__).resolve().parent.parent)
    try:
        yield proc
    finally:
        _stop(proc)


def _wait(engine: Any, ids: list[str], worker: subprocess.Popen[bytes], *, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    wanted = set(ids)
    while time.monotonic() < deadline:
        rows = recent_activity(engine, limit=max(200, len(ids) * 2))
        states = {r["id"]: r["state"] for r in rows if r["id"] in wanted}
        if len(states) == len(ids) and all(s in TERMINAL_STATES for s in states.values()):
            return True
        if worker.poll() is not None:
            print("the worker process exited early", file=sys.stderr)
            return False
        time.sleep(0.2)
    print("timed out waiting for outcomes", file=sys.stderr)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _sleep_forever() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
