"""`tenantmail` command line: demo (the main command), worker, dispatcher, beat, api, keys, migrate, doctor, health,
emulator, activity, bench, chaos."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from shared.logging import configure_logging
from shared.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tenantmail", description=__doc__)
    sub = parser.add_subparsers(dest="command")

    demo = sub.add_parser("demo", help="run the embedded stack and send sample notifications (default)")
    demo.add_argument("--keep-running", action="store_true",
                      help="keep the stack up after the demo, with the API and admin page")

    worker = sub.add_parser("worker", help="run a Celery delivery worker (threads pool)")
    worker.add_argument("--concurrency", type=int, default=None)
    worker.add_argument("--no-dispatcher", action="store_true", help="do not run a standby dispatcher")
    worker.add_argument("--hostname", default=None)
    worker.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port")

    sub.add_parser("dispatcher", help="run only the dispatcher loop")
    sub.add_parser("beat", help="run the scheduler (exactly one): retention purge, credential expiry reminders")

    api = sub.add_parser("api", help="serve the HTTP API and the admin web page")
    api.add_argument("--host", default=None)
    api.add_argument("--port", type=int, default=None)

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key bound to one tenant and role; prints it once")
    create.add_argument("--tenant", required=True)
    create.add_argument("--role", required=True, choices=["admin", "sender", "viewer"])
    create.add_argument("--label", default=None)
    revoke = keys.add_parser("revoke", help="revoke a key by its id (the part after tm_)")
    revoke.add_argument("key_id")

    sub.add_parser("migrate", help="upgrade the database schema")

    doctor = sub.add_parser("doctor", help="check configuration, database, Redis and a tenant's provider")
    doctor.add_argument("--tenant", default=None, help="also check that this tenant's provider gets a token")

    health = sub.add_parser("health", help="exit 0 when this host's processes of a role are live (health checks)")
    health.add_argument("role", choices=["worker", "dispatcher", "beat"])
    health.add_argument("--max-age", type=float, default=30.0,
                        help="seconds a process may go without being live (default 30)")

    activity = sub.add_parser("activity", help="print the delivery activity table")
    activity.add_argument("--tenant", default=None)
    activity.add_argument("--limit", type=int, default=50)

    from emulator import cli as emulator_cli

    emulator_cli.add_arguments(sub.add_parser("emulator", help="run the Entra ID + Graph emulator and its SMTP relay"))

    from benchmarks import cli as bench_cli

    bench_cli.add_arguments(sub.add_parser("bench", help="run a benchmark scenario (or all) and report"))

    from benchmarks import chaos

    chaos.add_arguments(sub.add_parser("chaos", help="deliver while workers die, Redis is flushed and "
                                                     "PostgreSQL restarts; check nothing is lost or duplicated"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tenantmail` console script."""
    args = _parser().parse_args(argv)
    command = args.command or "demo"
    if command == "emulator":
        from emulator import cli as emulator_cli

        return int(emulator_cli.run(args))
    if command == "bench":
        from benchmarks import cli as bench_cli

        return int(bench_cli.run(args))
    if command == "chaos":
        from benchmarks import chaos

        return chaos.main(args)
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_json)
    if command == "migrate":
        from shared.db import migrate

        migrate(settings)
        return 0
    if command == "worker":
        from worker.celery_app import run_worker

        run_worker(settings, concurrency=args.concurrency or settings.worker_concurrency,
                   with_dispatcher=not args.no_dispatcher, hostname=args.hostname,
                   metrics_port=args.metrics_port or settings.metrics_port)
        return 0
    if command == "dispatcher":
        return _run_dispatcher(settings)
    if command == "doctor":
        from shared.doctor import run_checks

        checks = run_checks(settings, args.tenant)
        print("\n".join(map(str, checks)))
        return 1 if any(c.status == "fail" for c in checks) else 0
    if command == "beat":
        from worker.celery_app import run_beat

        run_beat(settings)
        return 0
    if command == "api":
        from api.app import run_api

        run_api(settings, host=args.host, port=args.port)
        return 0
    if command == "health":
        from worker.liveness import check

        verdict = check(settings.state_dir, args.role, args.max_age)
        print("\n".join(verdict.lines), file=sys.stdout if verdict.ok else sys.stderr)
        return 0 if verdict.ok else 1
    if command == "keys":
        return _keys(settings, args)
    if command == "activity":
        from shared.activity import print_activity
        from shared.db import make_engine

        print_activity(make_engine(settings), tenant_id=args.tenant, limit=args.limit)
        return 0
    from shared.demo import run_demo

    return run_demo(settings, keep_running=getattr(args, "keep_running", False))


def _keys(settings: Settings, args: argparse.Namespace) -> int:
    from api.keys import create_key, revoke_key
    from shared.db import make_engine

    engine = make_engine(settings)
    if args.keys_command == "create":
        print(create_key(engine, args.tenant, args.role, label=args.label))
        return 0
    if revoke_key(engine, args.key_id):
        return 0
    print(f"no active key {args.key_id}", file=sys.stderr)
    return 1


def _run_dispatcher(settings: Settings) -> int:
    from worker.celery_app import create_celery, start_dispatcher

    dispatcher = start_dispatcher(create_celery(settings), settings)
    signal.signal(signal.SIGTERM, lambda *_: dispatcher.stop_event.set())
    try:
        while not dispatcher.stop_event.wait(1.0):
            pass
    except KeyboardInterrupt:
        dispatcher.stop_event.set()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
