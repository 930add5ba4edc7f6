"""`tenantmail emulator` / `python -m emulator`: run the emulator (Entra ID, Graph and the local SMTP
relay) until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys

from emulator.config import EmulatorConfig
from emulator.directory import demo_directory, load_directory_file
from emulator.server import Emulator


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the emulator command."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (default 0)")
    parser.add_argument("--tls", dest="tls", action="store_true", default=True, help="HTTPS (default)")
    parser.add_argument("--no-tls", dest="tls", action="store_false", help="plain HTTP")
    parser.add_argument("--directory", help="YAML or JSON directory file (default: the demo directory)")
    parser.add_argument("--empty", action="store_true", help="start with an empty directory")
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="latency added to every Entra/Graph call"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for deterministic ids and fault rolls")
    parser.add_argument("--token-lifetime-s", type=int, default=3599)
    parser.add_argument("--ca-out", default=None, help="where to write the CA PEM (default: in --state-dir)")
    parser.add_argument("--tls-hostname", action="append", default=[],
                        help="another name the certificate covers (repeatable), e.g. a compose service name")
    parser.add_argument("--state-dir", default=None, help="directory for the CA PEM (default: a temp dir)")
    parser.add_argument("--smtp-port", type=int, default=0, help="port of the local SMTP relay; 0 picks a free one")
    parser.add_argument("--smtp-security", choices=["starttls", "tls", "none"], default="starttls",
                        help="the relay offers STARTTLS (default), implicit TLS, or plain text")
    parser.add_argument("--no-smtp", dest="smtp", action="store_false", default=True, help="no SMTP relay")
    parser.add_argument(
        "--advertised-base-url",
        default=None,
        help="base URL put in discovery documents (for URL-rewriting clients)",
    )


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """Build the config the options describe."""
    if args.directory:
        directory = load_directory_file(args.directory)
    else:
        directory = {"tenants": []} if args.empty else demo_directory()
    return EmulatorConfig(
        host=args.host,
        port=args.port,
        tls=args.tls,
        directory=directory,
        latency_ms=args.latency_ms,
        seed=args.seed,
        token_lifetime_s=args.token_lifetime_s,
        ca_path=args.ca_out,
        tls_hostnames=tuple(args.tls_hostname),
        state_dir=args.state_dir,
        advertised_base_url=args.advertised_base_url,
        smtp=args.smtp,
        smtp_port=args.smtp_port,
        smtp_security=args.smtp_security,
    )


async def serve(config: EmulatorConfig) -> None:
    """Start, print the ready line, wait for a signal, stop."""
    emulator = Emulator(config)
    await emulator.start()
    sys.stdout.write(json.dumps(emulator.ready_info()) + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await emulator.stop()


def run(args: argparse.Namespace) -> int:
    """Run until interrupted; returns the exit status."""
    config = config_from_args(args)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m emulator`."""
    parser = argparse.ArgumentParser(prog="python -m emulator", description=__doc__)
    add_arguments(parser)
    with contextlib.suppress(KeyboardInterrupt):
        return run(parser.parse_args(argv))
    return 0
