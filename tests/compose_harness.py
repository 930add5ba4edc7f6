"""Run docker-compose services the way their image would, without a container engine.

What a container gives a process, and how this harness gives the same on the host:

- the image's filesystem, the app installed by root and read-only to the app user: `pip install .` into a
  venv under a temp dir, then `chmod -R a-w`;
- the Dockerfile stage's `USER`, `WORKDIR`, `ENV` (PATH included) and `VOLUME`s: parsed from the Dockerfile
  (the stage the service's `build.target` names, else the last);
- each container's own `VOLUME` directories (anonymous volumes keep the image directory's owner): a fresh
  directory per service instance, owned by the image's user;
- named volumes from `volumes:`: one directory per volume, shared by the services that mount it, owned by the
  image's user (the image that first mounts it created the directory for that user);
- `environment:` exactly as `docker-compose config` renders it: parsed from that command's YAML output;
- service hostnames (`postgres`, `redis`, `emulator`) and their ports: 127.0.0.1 and the real port, i.e.
  PostgreSQL's 5432, the test's private redis-server, and a free port per published port.

Paths inside the image (`/opt/...`, `/var/lib/...`) are rewritten to their temp-dir stand-ins wherever they occur
in the environment, the command or the health check. The one substitution beyond hosts, ports and paths is the
database name: PostgreSQL here is shared, so each run gets a database of its own (owned by the compose file's
role, created if missing; trust authentication makes the password moot).
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import signal
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# python:3.11-slim's PATH, which `ENV PATH=...:$PATH` extends.
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Stage:
    """What one Dockerfile stage sets for the processes of its image."""

    name: str
    user: str = "root"
    workdir: str = "/"
    env: dict[str, str] = field(default_factory=dict)
    volumes: list[str] = field(default_factory=list)


def parse_dockerfile(text: str) -> dict[str, Stage]:
    """The stages of a Dockerfile by name (unnamed ones by index), with inherited USER/WORKDIR/ENV/VOLUME."""
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in _instructions(text):
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            parts = rest.split()
            base = stages.get(parts[0])
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(len(stages))
            current = Stage(name, base.user, base.workdir, dict(base.env), list(base.volumes)) if base \
                else Stage(name, env={"PATH": BASE_PATH})
            stages[name] = current
        elif current is not None:
            _apply(current, word, rest)
    return stages


def _instructions(text: str) -> Iterable[str]:
    joined = re.sub(r"\\\n", " ", text)
    for raw in joined.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            yield line


def _apply(stage: Stage, word: str, rest: str) -> None:
    if word == "USER":
        stage.user = rest.strip()
    elif word == "WORKDIR":
        stage.workdir = rest.strip()
    elif word == "VOLUME":
        stage.volumes += yaml.safe_load(rest) if rest.lstrip().startswith("[") else rest.split()
    elif word == "ENV":
        pairs = shlex.split(rest)
        if pairs and "=" not in pairs[0]:  # legacy `ENV KEY value`
            pairs = [f"{pairs[0]}={' '.join(pairs[1:])}"]
        for pair in pairs:
            key, _, value = pair.partition("=")
            stage.env[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: stage.env.get(m.group(1), ""), value)


def user_ids(user: str) -> tuple[int, int]:
    """The uid and gid a Dockerfile `USER` line names (numeric, or a name known to this host)."""
    name, _, group = user.partition(":")
    if name.isdigit():
        uid = int(name)
        return uid, int(group) if group.isdigit() else uid
    entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


@dataclass
class Container:
    """One service instance, ready to start as its image's user."""

    name: str
    command: list[str]
    env: dict[str, str]
    cwd: Path
    uid: int
    gid: int
    grace_s: float
    healthcheck: list[str] | None
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def argv(self, command: list[str]) -> list[str]:
        """`command` run as this container's user, with no supplementary groups."""
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--", *command]

    def start(self) -> Container:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv(self.command), env=self.env, cwd=self.cwd, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return self

    def run(self, command: list[str], timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        """A one-off command in this container (`docker compose exec`)."""
        return subprocess.run(self.argv(command), env=self.env, cwd=self.cwd, capture_output=True, text=True,
                              timeout=timeout_s)

    def healthy(self) -> subprocess.CompletedProcess[str] | None:
        """Its health check's result when it passes, else None."""
        assert self.healthcheck, f"{self.name} has no health check"
        done = self.run(self.healthcheck, timeout_s=60)
        return done if done.returncode == 0 else None

    def stop(self) -> int | None:
        """SIGTERM, as `docker compose stop` sends; the exit status within the grace period, else None."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=self.grace_s)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def compose_config(root: Path, files: list[str], profiles: list[str], env: dict[str, str]) -> dict[str, Any]:
    """`docker-compose config` for these files and profiles, parsed."""
    argv = ["docker-compose", "--project-directory", str(root)]
    for name in files:
        argv += ["-f", str(root / name)]
    for profile in profiles:
        argv += ["--profile", profile]
    out = subprocess.run([*argv, "config"], env=env, capture_output=True, text=True, check=True).stdout
    config: dict[str, Any] = yaml.safe_load(out)
    return config


def duration_s(value: str | None, default_s: float = 10.0) -> float:
    """A compose duration (`30s`, `1m30s`) in seconds; compose's default grace is 10 s."""
    if not value:
        return default_s
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|h|m|s)", value))


@dataclass
class Rewrite:
    """Host, port and path substitutions from the container's world to this host's."""

    hosts: dict[str, str]  # service name -> 127.0.0.1
    ports: dict[tuple[str, int], int]  # (service, container port) -> loopback port
    paths: dict[str, str]  # path in the image -> stand-in directory
    database: tuple[str, str] = ("", "")  # database name in the file -> this run's

    def text(self, value: str, service: str) -> str:
        for (svc, port), real in self.ports.items():
            value = value.replace(f"{svc}:{port}", f"127.0.0.1:{real}")
            if svc == service:
                value = value.replace(f"127.0.0.1:{port}", f"127.0.0.1:{real}")
        for image_path, here in sorted(self.paths.items(), key=lambda kv: -len(kv[0])):
            value = re.sub(rf"(?<![\w/]){re.escape(image_path)}(?=/|$|\W)", here, value)
        if self.database[0]:
            value = re.sub(rf"(postgresql://[^/]+/){self.database[0]}$", rf"\g<1>{self.database[1]}", value)
        return value

    def env(self, env: dict[str, str], service: str) -> dict[str, str]:
        out = {k: self.text(v, service) for k, v in env.items()}
        for key, value in env.items():
            if key.endswith("_HOST") and value in self.hosts:
                out[key] = self.hosts[value]
                port_key = key.removesuffix("_HOST") + "_PORT"
                if port_key in env and (value, int(env[port_key])) in self.ports:
                    out[port_key] = str(self.ports[(value, int(env[port_key]))])
        return out

    def command(self, argv: list[str], service: str) -> list[str]:
        own = {str(p): str(real) for (svc, p), real in self.ports.items() if svc == service}
        return [own.get(a, "127.0.0.1" if a == "0.0.0.0" else self.text(a, service)) for a in argv]
