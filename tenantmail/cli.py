"""`tenantmail` command line: demo (the main command), worker, dispatcher, beat, api, keys, secrets, migrate,
doctor, health, activity; emulator, bench, chaos and soak for development.

Subcommands are registered lazily: only the chosen command's module is imported, so a production
`tenantmail worker` never loads the emulator or the benchmarks (nor their dependencies, which live in
the `emulator` extra).
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from shared.errors import ConfigurationError
from shared.logging import configure_logging
from shared.settings import Settings
from tenantmail.preflight import check_state_dir

AddArguments = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class Command:
    """One subcommand: its help line, where its options and its runner live ("module:function")."""

    help: str
    arguments: str
    runner: str
    needs_settings: bool = True
    writes_state: bool = True  # checks at start that TENANTMAIL_STATE_DIR is writable


COMMANDS: dict[str, Command] = {
    "demo": Command("run the embedded stack and send sample notifications (default)",
                    "tenantmail.cli:_demo_args", "tenantmail.cli:_demo"),
    "worker": Command("run a Celery delivery worker (threads pool)", "tenantmail.cli:_worker_args",
                      "tenantmail.cli:_worker"),
    "dispatcher": Command("run only the dispatcher loop", "tenantmail.cli:_dispatcher_args",
                          "tenantmail.cli:_dispatcher"),
    "beat": Command("run the scheduler (exactly one): retention purge, credential expiry reminders",
                    "tenantmail.cli:_no_args", "tenantmail.cli:_beat"),
    "api": Command("serve the HTTP API and the admin web page", "tenantmail.cli:_api_args", "tenantmail.cli:_api"),
    "keys": Command("manage API keys", "tenantmail.cli:_keys_args", "tenantmail.cli:_keys"),
    "secrets": Command("re-encrypt stored credentials and cached tokens under the newest encryption key",
                       "tenantmail.cli:_secrets_args", "tenantmail.cli:_secrets"),
    "migrate": Command("upgrade the database schema", "tenantmail.cli:_no_args", "tenantmail.cli:_migrate"),
    "doctor": Command("check configuration, database, Redis and a tenant's provider", "tenantmail.cli:_doctor_args",
                      "tenantmail.cli:_doctor"),
    "health": Command("exit 0 when this host's processes of a role are live (health checks)",
                      "tenantmail.cli:_health_args", "tenantmail.cli:_health", writes_state=False),
    "activity": Command("print the delivery activity table", "tenantmail.cli:_activity_args",
                        "tenantmail.cli:_activity"),
    "emulator": Command("run the Entra ID + Graph emulator and its SMTP relay (development)",
                        "emulator.cli:add_arguments", "emulator.cli:run", needs_settings=False),
    "bench": Command("run a benchmark scenario (or all) and report (development)", "benchmarks.cli:add_arguments",
                     "benchmarks.cli:run", needs_settings=False),
    "chaos": Command("deliver while workers die, Redis is flushed and PostgreSQL restarts; check nothing is lost "
                     "or duplicated (development)", "benchmarks.chaos:add_arguments", "benchmarks.chaos:main",
                     needs_settings=False),
    "soak": Command("steady load with sparse faults for N minutes; check worker memory and file descriptors, "
                    "database connections and Redis do not grow (development)", "benchmarks.soak:add_arguments",
                    "benchmarks.soak:main", needs_settings=False),
}


def _load(path: str) -> Callable[..., object]:
    module, _, name = path.partition(":")
    try:
        loaded: Callable[..., object] = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        raise ConfigurationError(f"this command needs {exc.name}, which is not installed; "
                                 "install the development extra: pip install 'tenantmail[dev]'") from exc
    return loaded


def _chosen(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (the first word that is not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def _parser(chosen: str | None) -> argparse.ArgumentParser:
    """The parser, with options only for the chosen command (so nothing else is imported)."""
    parser = argparse.ArgumentParser(prog="tenantmail", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    for name, command in COMMANDS.items():
        child = sub.add_parser(name, help=command.help)
        if name == chosen:
            _load(command.arguments)(child)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tenantmail` console script. A configuration error is one line and exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(argv)
    except ConfigurationError as exc:
        print(f"tenantmail: configuration error: {exc}", file=sys.stderr)
        return 2


def _run(argv: list[str]) -> int:
    chosen = _chosen(argv)
    args = _parser(chosen if chosen in COMMANDS else None).parse_args(argv)
    name = args.command or "demo"
    command = COMMANDS[name]
    if args.command is None:
        args = _parser(name).parse_args([name, *argv])
    runner = _load(command.runner)
    if not command.needs_settings:
        return _status(runner(args))
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_json)
    if command.writes_state:
        check_state_dir(settings.state_dir)
    return _status(runner(settings, args))


def _status(result: object) -> int:
    return result if isinstance(result, int) else 0


def _no_args(parser: argparse.ArgumentParser) -> None:
    del parser


def _demo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep-running", action="store_true",
                        help="keep the stack up after the demo, with the API and admin page")


def _worker_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--no-dispatcher", action="store_true", help="do not run a standby dispatcher")
    parser.add_argument("--hostname", default=None)
    parser.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port")


def _dispatcher_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus /metrics (tenantmail_dispatcher_leader, queue gauges) on this port")


def _api_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)


def _keys_args(parser: argparse.ArgumentParser) -> None:
    keys = parser.add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key bound to one tenant and role (or a service key bound to "
                                            "a list of tenants); prints it once")
    create.add_argument("--tenant", default=None, help="the key's tenant (admin, sender, viewer)")
    create.add_argument("--role", required=True, choices=["admin", "sender", "viewer", "service",
                                                                  "platform_viewer"])
    create.add_argument("--tenants", default=None,
                        help="service and platform_viewer keys: the tenants it may act for, comma-separated, "
                             "or '*' for all")
    create.add_argument("--label", default=None)
    create.add_argument("--expires-at", default=None, help="ISO 8601 time after which the key is refused (UTC)")
    revoke = keys.add_parser("revoke", help="revoke a key by its id (the part after tm_)")
    revoke.add_argument("key_id")


def _secrets_args(parser: argparse.ArgumentParser) -> None:
    secrets = parser.add_subparsers(dest="secrets_command", required=True)
    secrets.add_parser("rotate", help="re-encrypt every credential version and cached token under the first key of "
                                      "TENANTMAIL_ENCRYPTION_KEYS (checks all first; idempotent)")


def _doctor_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tenant", default=None, help="also check that this tenant's provider gets a token")


def _health_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("role", choices=["worker", "dispatcher", "beat"])
    parser.add_argument("--max-age", type=float, default=30.0,
                        help="seconds a process may go without being live (default 30)")


def _activity_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tenant", default=None)
    parser.add_argument("--limit", type=int, default=50)


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from tenantmail.demo import run_demo

    return run_demo(settings, keep_running=args.keep_running)


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from worker.celery_app import run_worker

    run_worker(settings, concurrency=args.concurrency or settings.worker_concurrency,
               with_dispatcher=not args.no_dispatcher, hostname=args.hostname,
               metrics_port=args.metrics_port or settings.metrics_port)
    return 0


def _dispatcher(settings: Settings, args: argparse.Namespace) -> int:
    from shared.db import make_engine
    from shared.metrics import metrics
    from worker.celery_app import create_celery, start_dispatcher

    if port := args.metrics_port or settings.metrics_port:
        metrics.serve(port, make_engine(settings, pool_size=1))
    dispatcher = start_dispatcher(create_celery(settings), settings)
    signal.signal(signal.SIGTERM, lambda *_: dispatcher.stop_event.set())
    try:
        while not dispatcher.stop_event.wait(1.0):
            pass
    except KeyboardInterrupt:
        dispatcher.stop_event.set()
    return 0


def _beat(settings: Settings, args: argparse.Namespace) -> int:
    from worker.celery_app import run_beat

    run_beat(settings)
    return 0


def _api(settings: Settings, args: argparse.Namespace) -> int:
    from api.app import run_api

    run_api(settings, host=args.host, port=args.port)
    return 0


def _keys(settings: Settings, args: argparse.Namespace) -> int:
    from api.keys import create_key, revoke_key
    from shared.clock import as_utc
    from shared.db import make_engine

    engine = make_engine(settings)
    if args.keys_command == "create":
        print(create_key(engine, args.tenant or "", args.role, label=args.label, tenants=_tenants(args),
                         expires_at=as_utc(datetime.fromisoformat(args.expires_at)) if args.expires_at else None))
        return 0
    if revoke_key(engine, args.key_id):
        return 0
    print(f"no active key {args.key_id}", file=sys.stderr)
    return 1


def _tenants(args: argparse.Namespace) -> list[str] | None:
    """A service or platform_viewer key's tenants (None: all); the other roles take --tenant instead."""
    if args.role not in ("service", "platform_viewer"):
        if not args.tenant or args.tenants:
            raise ConfigurationError("--tenant (and not --tenants) is required for the admin, sender and viewer roles")
        return None
    if args.tenant or not args.tenants:
        raise ConfigurationError(f"a {args.role} key takes --tenants a,b (or '*' for all tenants), not --tenant")
    return None if args.tenants.strip() == "*" else [t.strip() for t in args.tenants.split(",") if t.strip()]


def _secrets(settings: Settings, args: argparse.Namespace) -> int:
    from shared.db import make_engine
    from shared.errors import SecretsUndecryptable
    from shared.redis_client import sync_client
    from shared.secretbox import SecretBox
    from tenantmail.rotation import rotate_all

    client = sync_client(settings.redis_url) if settings.redis_url else None
    try:
        report = rotate_all(make_engine(settings), SecretBox.from_settings(settings), client)
    except SecretsUndecryptable as exc:
        print(f"tenantmail secrets rotate: {exc}", file=sys.stderr)
        return 1
    print("\n".join(report.lines()))
    return 0


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from shared.db import migrate

    migrate(settings)
    return 0


def _doctor(settings: Settings, args: argparse.Namespace) -> int:
    from tenantmail.doctor import run_checks

    checks = run_checks(settings, args.tenant)
    print("\n".join(map(str, checks)))
    return 1 if any(c.status == "fail" for c in checks) else 0


def _health(settings: Settings, args: argparse.Namespace) -> int:
    from worker.liveness import check

    verdict = check(settings.state_dir, args.role, args.max_age)
    print("\n".join(verdict.lines), file=sys.stdout if verdict.ok else sys.stderr)
    return 0 if verdict.ok else 1


def _activity(settings: Settings, args: argparse.Namespace) -> int:
    from shared.db import make_engine
    from tenantmail.activity_table import print_activity

    print_activity(make_engine(settings), tenant_id=args.tenant, limit=args.limit)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
