"""A private PostgreSQL instance for runs that restart their database (the chaos run).

initdb in a temporary directory, trust authentication, listening on a free loopback port with its
own socket directory; started, restarted and stopped with pg_ctl. Restarting it disturbs nobody
else, unlike a restart of the machine's cluster. initdb refuses to run as root, so as root the
server runs as the `postgres` user (which the Debian packages create).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from tenantmail.embedded import free_port

_SETTINGS = {  # a throwaway instance: durability off (a clean restart still loses nothing), room for workers
    "listen_addresses": "'127.0.0.1'", "max_connections": "400", "fsync": "off",
    "synchronous_commit": "off", "full_page_writes": "off", "shared_buffers": "128MB",
}


def postgres_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin that has initdb and pg_ctl, else pg_config's."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: [int(x) for x in re.findall(r"\d+", p.parent.parent.name)])
    if found:
        return found[-1].parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        bindir = Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip())
        if (bindir / "initdb").exists():
            return bindir
    return None


@dataclass
class PrivatePostgres:
    """One running instance; `admin_url` reaches its `postgres` database as the superuser."""

    bin_dir: Path
    root: Path
    port: int
    run_as: str | None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout_s: float = 120) -> None:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        user = {"user": self.run_as, "group": pwd.getpwnam(self.run_as).pw_gid} if self.run_as else {}
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=self.root, **user)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n"
                               + self.log_tail())

    def log_tail(self) -> str:
        """The end of the server log (for error messages)."""
        log = self.root / "server.log"
        return log.read_text(errors="replace")[-3000:] if log.exists() else ""

    def init(self) -> None:
        """Create the cluster and write its settings (kept across restarts)."""
        self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--no-sync", "--no-instructions")
        conf = {**_SETTINGS, "port": str(self.port), "unix_socket_directories": f"'{self.root}'"}
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as fh:
            fh.write("".join(f"{k} = {v}\n" for k, v in conf.items()))

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.root / "server.log"), "-w", "start")
        self.wait_ready()

    def restart(self, down_s: float = 0.0) -> float:
        """Fast shutdown (every connection is cut), `down_s` without a server, start again;
        returns the seconds the database was unavailable."""
        t0 = time.monotonic()
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")
        time.sleep(down_s)
        self.start()
        return time.monotonic() - t0

    def stop(self) -> None:
        """Stop the server (immediate: nothing here needs to survive)."""
        if (self.data_dir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Wait until a connection succeeds."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with psycopg.connect(self.admin_url, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError("private PostgreSQL did not come up:\n" + self.log_tail()) from None
                time.sleep(0.1)


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """Start a private instance on a free port; stop it and delete its files on exit."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    run_as = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="tm-pg-"))
    if run_as:
        entry = pwd.getpwnam(run_as)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    pg = PrivatePostgres(bin_dir, root, free_port(), run_as)
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        try:
            pg.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)
