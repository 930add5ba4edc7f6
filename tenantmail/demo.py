"""The main command: an embedded stack that sends sample notifications through the emulator.

With no DATABASE_URL / REDIS_URL it runs on SQLite under state_dir and a private redis-server it
starts itself; the emulator plays Entra ID and Graph with the demo tenant (Contoso, whose app an
Application Access Policy scopes to governance@contoso.example), and its local SMTP relay is the
platform default's relay for the no-reply sender. One worker process delivers; the activity table
is printed at the end.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import ExitStack
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
from shared.db import migrate
from shared.models import TERMINAL_STATES, State
from shared.producer import Producer
from shared.providers import save_graph_provider
from shared.secretbox import SecretBox
from shared.settings import Settings
from tenantmail.activity_table import format_activity
from tenantmail.embedded import start_redis
from tenantmail.stack import ProcessStack, stack_env, stop_process

SAMPLES: list[tuple[str, dict[str, Any]]] = [
    *[("contoso", {"to": [f"reviewer{i}@contoso.example"], "subject": f"Access review #{i} is due",
                   "body": "<p>Please complete your access review.</p>", "body_type": "html",
                   "headers": {"X-Review-Id": f"AR-{1000 + i}"}}) for i in range(1, 6)],
    ("contoso-ceo", {"to": ["board@contoso.example"], "subject": "Sent from a mailbox outside the policy",
                     "body": "This one is refused with ErrorAccessDenied [RAOP] and held for the admin."}),
    ("fabrikam", {"to": ["it@fabrikam.example"], "subject": "Welcome to the platform",
                  "body": "Sent by the platform's default no-reply sender."}),
]


def run_demo(settings: Settings, *, keep_running: bool = False) -> int:
    """Start the stack, send the samples, print the activity table; returns an exit code."""
    with ExitStack() as stack:
        redis_url = settings.redis_url
        if redis_url is None:
            redis_url, proc = start_redis(settings.state_dir / "redis")
            stack.callback(stop_process, proc)
        emu = stack.enter_context(running_emulator(directory=demo_directory()))
        env = stack_env(database_url=settings.database_url, redis_url=redis_url, state_dir=settings.state_dir,
                        emulator=emu, smtp=emu.smtp_settings(), extra={
                            "TENANTMAIL_PLATFORM_SENDER": PLATFORM_NO_REPLY,
                            "TENANTMAIL_LOG_LEVEL": os.environ.get("TENANTMAIL_LOG_LEVEL", "WARNING")})
        env = {**{k: v for k, v in os.environ.items() if k.startswith("TENANTMAIL_")}, **env}  # the demo's win
        procs = ProcessStack(env, settings.state_dir / "logs")
        stack.callback(procs.stop)
        settings = procs.settings
        migrate(settings)
        engine = procs.engine
        _configure_tenants(engine, SecretBox.from_settings(settings))
        procs.start_workers(1, concurrency=8, inherit_output=True)
        print(f"emulator {emu.base_url}  redis {redis_url}  database {settings.database_url or 'sqlite'}")
        ids = Producer(engine, settings).enqueue_many(SAMPLES)
        print(f"enqueued {len(ids)} notifications; waiting for outcomes ...")
        done = _wait(procs, ids, timeout_s=90)
        rows = [r for r in recent_activity(engine, limit=200) if r["id"] in set(ids)]
        print(format_activity(rows))
        print(f"emulator outbox: {len(emu.outbox())} message(s) accepted by Graph, "
              f"{len(emu.smtp_messages())} by the SMTP relay (platform default)")
        if keep_running:
            _start_api(procs)
            print("stack running; Ctrl-C to stop")
            _sleep_forever()
        return 0 if done else 1
    return 1


def _configure_tenants(engine: Any, box: SecretBox) -> None:
    common: dict[str, Any] = dict(azure_tenant=DEMO_TENANT_ID, client_id=DEMO_CLIENT_ID,
                                  client_secret=DEMO_CLIENT_SECRET, created_by="demo")
    save_graph_provider(engine, box, "contoso", sender_address=DEMO_SENDER, sender_name="Contoso Governance",
                        reply_to=DEMO_SENDER, **common)
    save_graph_provider(engine, box, "contoso-ceo", sender_address=DEMO_CEO, sender_name="Contoso CEO", **common)
    # "fabrikam" has no configuration: it uses the platform default sender, through the SMTP relay.


def _start_api(procs: ProcessStack) -> None:
    """The API and admin page as a child process, and an admin key for the demo tenant."""
    from api.keys import create_key

    key = create_key(procs.engine, "contoso", "admin", label="demo")
    procs.start("api", "api", inherit_output=True)
    print(f"admin page http://{procs.settings.api_host}:{procs.settings.api_port}/ui/login  "
          f"API key (tenant contoso, admin; shown once): {key}")


def _wait(procs: ProcessStack, ids: list[str], *, timeout_s: float) -> bool:
    try:
        # The sample outside the Access Policy is held for its admin to fix, not failed: that is its outcome here.
        procs.wait_terminal(ids, timeout_s=timeout_s, settled=(*TERMINAL_STATES, State.HELD.value))
    except AssertionError as exc:
        reason = "the worker process exited early" if "every worker exited" in str(exc) else "timed out"
        print(f"{reason} waiting for outcomes", file=sys.stderr)
        return False
    return True


def _sleep_forever() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
