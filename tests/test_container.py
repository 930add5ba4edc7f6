"""The compose stack runs as shipped: every service as its image's unprivileged user, on a read-only install,
with exactly the environment `docker-compose config` gives it (see tests/compose_harness.py for how hosts,
ports and paths map to this machine). The dev profile's emulator plays Entra ID and Graph."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from emulator.control_client import ControlClient
from emulator.demo import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_SENDER, DEMO_TENANT_ID
from tenantmail.embedded import free_port
from tests.compose_harness import (
    Container,
    Rewrite,
    Stage,
    compose_config,
    duration_s,
    parse_dockerfile,
    user_ids,
)
from tests.conftest import IN_CI, PG_ADMIN_URL
from tests.stack import ROOT, new_encryption_key, wait_until

pytestmark = [pytest.mark.container, pytest.mark.postgres, pytest.mark.timeout(900)]

COMPOSE_FILES = [f for f in ("docker-compose.yml", "docker-compose.dev.yml") if (ROOT / f).exists()]
PROFILES = ["dev"]
LONG_RUNNING = ["emulator", "api", "worker", "dispatcher", "beat"]
EXTRAS_BY_STAGE = {"dev": "emulator"}  # what the Dockerfile's dev stage adds to the runtime install
SOURCE_IGNORED = (".venv", ".git", "build", "dist", "var", "*.egg-info", "__pycache__", "test-artifacts")


def _require(condition: bool, why: str) -> None:
    if not condition:
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)


def _world_readable_dir(prefix: str) -> Iterator[Path]:
    # pytest's tmp_path sits in a 0700 directory that the services' user could not enter.
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _base_python() -> str:
    """A system Python 3.11+ the services' user can run (a venv only links to its base interpreter, and this
    test's own may live in root's home)."""
    for candidate in ("/usr/local/bin/python3", "/usr/bin/python3"):
        if os.access(candidate, os.X_OK) and subprocess.run(
                [candidate, "-c", "import sys, ensurepip; assert sys.version_info >= (3, 11)"],
                capture_output=True).returncode == 0:
            return candidate
    _require(False, "needs a system Python 3.11+ with venv (python3-venv)")
    raise AssertionError


@pytest.fixture(scope="module")
def image_root() -> Iterator[Path]:
    """The app installed as the image installs it: `pip install .` by root, then made read-only."""
    _require(os.geteuid() == 0, "running services as another user needs root")
    _require(shutil.which("docker-compose") is not None and shutil.which("setpriv") is not None,
             "needs docker-compose (to render the file) and setpriv")
    for root in _world_readable_dir("tm-image-"):
        source = root / "src"  # a copy, so that the build leaves nothing in the work tree
        shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*SOURCE_IGNORED))
        venv = root / "venv"
        subprocess.run([_base_python(), "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, str(source)], check=True, cwd=root, capture_output=True)
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        for stage, extra in EXTRAS_BY_STAGE.items():
            subprocess.run([*pip, "--target", str(root / f"extra-{stage}"), *extras[extra]], check=True,
                           capture_output=True)
        subprocess.run(["chmod", "-R", "a-w", str(venv), *map(str, root.glob("extra-*"))], check=True)
        yield root


@pytest.fixture
def work_dir() -> Iterator[Path]:
    """Where the containers' volumes and logs live (enterable by their user)."""
    yield from _world_readable_dir("tm-containers-")


@pytest.fixture
def database(redis_url: str) -> Iterator[tuple[str, str]]:
    """A private database owned by the compose file's role: (name in the file, name here)."""
    del redis_url
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        _require(False, f"PostgreSQL is not reachable at {PG_ADMIN_URL}")
        raise
    name = f"tm_compose_{uuid.uuid4().hex[:10]}"
    with admin:
        if not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = 'tenantmail'").fetchone():
            admin.execute("CREATE ROLE tenantmail LOGIN PASSWORD 'tenantmail'")
        admin.execute(f'CREATE DATABASE "{name}" OWNER tenantmail')
    yield "tenantmail", name
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Deployment:
    """The services of the rendered compose file, as containers of this machine."""

    def __init__(self, image_root: Path, work: Path, redis_url: str, database: tuple[str, str]) -> None:
        env = {"PATH": os.environ["PATH"], "TENANTMAIL_ENCRYPTION_KEYS": new_encryption_key()}
        self.config = compose_config(ROOT, COMPOSE_FILES, PROFILES, env)
        self.stages = parse_dockerfile((ROOT / "Dockerfile").read_text())
        self.image_root, self.work = image_root, work
        redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        ports = {("postgres", 5432): 5432, ("redis", 6379): redis_port}
        for name, svc in self.config["services"].items():
            for mapping in svc.get("ports", []):
                ports[(name, int(mapping["target"] if isinstance(mapping, dict) else str(mapping).split(":")[-1]))] \
                    = free_port()
        self.rewrite = Rewrite({name: "127.0.0.1" for name in self.config["services"]}, ports, {}, database)
        self.named_volumes: dict[str, Path] = {}
        self.containers: list[Container] = []

    def stage(self, service: str) -> Stage:
        build = self.config["services"][service].get("build") or {}
        target = build.get("target") if isinstance(build, dict) else None
        return self.stages[target] if target else list(self.stages.values())[-1]

    def container(self, service: str, instance: int = 1) -> Container:
        """One instance of `service` with its image's user, directories and environment."""
        svc, stage = self.config["services"][service], self.stage(service)
        uid, gid = user_ids(stage.user)
        base = self.work / f"{service}-{instance}"
        paths = self._paths(stage, svc, base, uid, gid)
        rewrite = Rewrite(self.rewrite.hosts, self.rewrite.ports, paths, self.rewrite.database)
        env = {**stage.env, **{k: str(v) for k, v in (svc.get("environment") or {}).items()}}
        env = rewrite.env(env, service)
        if "VIRTUAL_ENV" not in stage.env:  # an image without a venv: its python is the one on PATH
            env["PATH"] = f"{self.image_root / 'venv' / 'bin'}:{env['PATH']}"
        if stage.name in EXTRAS_BY_STAGE:
            env["PYTHONPATH"] = str(self.image_root / f"extra-{stage.name}")
        env.setdefault("HOME", "/")
        check = (svc.get("healthcheck") or {}).get("test")
        original = [str(a) for a in svc["command"]]
        command = rewrite.command(original, service)
        for i, arg in enumerate(original[1:], start=1):  # unpublished ports (metrics): one per container here
            if original[i - 1].endswith("-port") and arg.isdigit() and (service, int(arg)) not in self.rewrite.ports:
                command[i] = str(free_port())
        container = Container(
            name=f"{service}-{instance}", command=command, env=env,
            cwd=Path(paths.get(stage.workdir, stage.workdir)), uid=uid, gid=gid,
            grace_s=duration_s(svc.get("stop_grace_period")),
            healthcheck=rewrite.command(check[1:], service) if check else None, log_path=base / "log")
        self.containers.append(container)
        return container

    def _paths(self, stage: Stage, svc: dict[str, Any], base: Path, uid: int, gid: int) -> dict[str, str]:
        """Stand-ins for the image's paths: the venv, the workdir, VOLUMEs and mounted named volumes."""
        base.mkdir(parents=True)
        paths: dict[str, str] = {}
        if "VIRTUAL_ENV" in stage.env:
            paths[stage.env["VIRTUAL_ENV"]] = str(self.image_root / "venv")
        workdir = base / "workdir"
        workdir.mkdir(mode=0o555)  # the image's directories belong to root
        paths[stage.workdir] = str(workdir)
        for i, volume in enumerate(stage.volumes):  # anonymous volumes keep the image directory's owner
            here = base / f"volume{i}"
            here.mkdir()
            os.chown(here, uid, gid)
            paths[volume] = str(here)
        for source, target in _named_volumes(svc):
            here = self.named_volumes.setdefault(source, self.work / f"named-{source}")
            if not here.exists():
                here.mkdir()
                os.chown(here, uid, gid)
            paths[target] = str(here)
        return paths

    def wait_healthy(self, container: Container) -> subprocess.CompletedProcess[str]:
        """Its health check's passing result; fails with every container's log when it does not pass."""
        try:
            done: subprocess.CompletedProcess[str] = wait_until(container.healthy, timeout_s=90,
                                                                what=f"{container.name}'s health check")
        except AssertionError as exc:
            last = container.run(container.healthcheck or ["true"])
            raise AssertionError(f"{exc}; it says: {last.stdout}{last.stderr}\n{self.logs()}") from None
        return done

    def stop_all(self) -> None:
        for container in self.containers:
            container.kill()

    def logs(self) -> str:
        return "\n".join(f"--- {c.name} (uid {c.uid})\n{c.log()[-2500:]}" for c in self.containers
                         if c.log_path.exists())


def _named_volumes(svc: dict[str, Any]) -> list[tuple[str, str]]:
    """(volume, mount point) of the named volumes a service mounts, in either of compose's spellings."""
    found = []
    for mount in svc.get("volumes", []):
        if isinstance(mount, dict):
            if mount.get("type") == "volume":
                found.append((mount["source"], mount["target"]))
        elif not mount.startswith(("/", ".", "~")):
            source, target = mount.split(":")[:2]
            found.append((source, target))
    return found


def _api(port: int, key: str, method: str, path: str, body: dict[str, Any]) -> requests.Response:
    return requests.request(method, f"http://127.0.0.1:{port}{path}", json=body, timeout=30,
                            headers={"Authorization": f"Bearer {key}"})


def test_compose_services_run_as_the_image_user_and_deliver_through_the_dev_emulator(
        image_root: Path, redis_url: str, database: tuple[str, str], work_dir: Path) -> None:
    # given the rendered compose file's services, each as its image's user on a read-only install
    deployment = Deployment(image_root, work_dir, redis_url, database)
    try:
        migrate = deployment.container("migrate").start()
        assert migrate.proc is not None and migrate.proc.wait(timeout=120) == 0, deployment.logs()
        services = [deployment.container(name, i) for name in LONG_RUNNING
                    for i in range(1, 3 if name == "worker" else 2)]
        for container in services:
            container.start()
            if container.name.startswith("emulator"):  # the others depend on it being healthy
                deployment.wait_healthy(container)

        # then each one's health check passes: live by progress for worker, dispatcher and beat
        for container in services:
            done = deployment.wait_healthy(container)
            print(f"{container.name} (uid {container.uid}): {done.stdout.strip() or 'healthy'}")
        assert {c.uid for c in services} == {deployment.containers[0].uid} != {0}

        # when a tenant is configured and a notification is posted to the API
        api = next(c for c in services if c.name == "api-1")
        api_port = deployment.rewrite.ports[("api", 8080)]
        created = api.run(["tenantmail", "keys", "create", "--tenant", "acme", "--role", "admin"])
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip()
        saved = _api(api_port, key, "PUT", "/v1/email-provider", {
            "provider": "customer", "service": "microsoft_graph", "sender_name": "Acme",
            "sender_address": DEMO_SENDER, "azure_tenant": DEMO_TENANT_ID,
            "client_id": DEMO_CLIENT_ID, "client_secret": DEMO_CLIENT_SECRET, "cloud": "global"})
        assert saved.status_code == 200, saved.text
        posted = _api(api_port, key, "POST", "/v1/notifications",
                      {"to": ["ana@example.org"], "subject": "Through the compose stack"})
        assert posted.status_code == 201, posted.text
        nid = posted.json()["id"]

        # then the emulator's Graph accepted it from a worker
        emulator = next(c for c in services if c.name == "emulator-1")
        ca_path = emulator.env.get("TENANTMAIL_CA_BUNDLE") or next(
            v for c in services for k, v in c.env.items() if k == "TENANTMAIL_CA_BUNDLE")
        control = ControlClient(f"https://127.0.0.1:{deployment.rewrite.ports[('emulator', 8443)]}", ca_path)
        try:
            sent = wait_until(lambda: [m for m in control.outbox()
                                       if m["x_headers"].get("X-Tenantmail-Notification-Id") == nid],
                              timeout_s=60, what="the notification in the emulator's outbox")
        except AssertionError:
            raise AssertionError(deployment.logs()) from None
        print("delivered:", json.dumps({k: sent[0].get(k) for k in ("mailbox", "x_headers")}), "id", nid)

        # and SIGTERM stops every service within its stop_grace_period
        for container in reversed(services):
            status = container.stop()
            assert status == 0, f"{container.name} exited {status} (grace {container.grace_s} s)\n{container.log()}"
    finally:
        deployment.stop_all()
