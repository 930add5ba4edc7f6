"""Run the emulator for tests and benchmarks (in a background thread, or as a subprocess), and
make app certificates to register on it."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from emulator.config import EmulatorConfig
from emulator.control_client import ControlClient, EmulatorHandle
from emulator.server import Emulator

_START_TIMEOUT_S = 60.0


def make_certificate(common_name: str = "tenantmail-app", *, valid_days: float = 30.0,
                     not_before_days: float = -1.0, key_size: int = 2048) -> tuple[str, str]:
    """A self-signed app certificate: (private key PEM, certificate PEM).

    Valid from `not_before_days` (negative = in the past) to `valid_days` from now; a negative
    `valid_days` makes an expired certificate.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=min(not_before_days, valid_days - 1)))
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return key_pem, cert.public_bytes(serialization.Encoding.PEM).decode()


class _ThreadRunner:
    """An Emulator on its own event loop in a daemon thread."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.emulator = Emulator(config)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="tenantmail-emulator", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.emulator.start())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self.emulator.stop())
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT_S):
            raise RuntimeError("emulator did not start")
        if self._error is not None:
            raise RuntimeError("emulator failed to start") from self._error

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_START_TIMEOUT_S)


def _handle(info: dict[str, Any]) -> EmulatorHandle:
    return EmulatorHandle(
        base_url=info["base_url"],
        port=int(info["port"]),
        ca_path=info["ca_path"],
        control=ControlClient(info["base_url"], info["ca_path"]),
        smtp_host=info.get("smtp_host"),
        smtp_port=info.get("smtp_port"),
        smtp_security=info.get("smtp_security"),
    )


@contextlib.contextmanager
def running_emulator(**config: Any) -> Iterator[EmulatorHandle]:
    """Start an emulator in a background thread on a free port; stop it on exit.

    Keyword arguments are EmulatorConfig fields; `directory=None` loads nothing (pass
    `emulator.directory.demo_directory()` for the demo tenants).
    """
    runner = _ThreadRunner(EmulatorConfig(**config))
    runner.start()
    handle = _handle(runner.emulator.ready_info())
    handle.emulator = runner.emulator  # type: ignore[attr-defined]  # in-process access for debugging
    try:
        yield handle
    finally:
        handle.control.close()
        runner.stop()


class EmulatorProcess:
    """`python -m emulator ...` as a subprocess (its own core), ready when it prints its JSON line.

    Usage: `with EmulatorProcess(directory=demo_directory(), tls=True) as handle: ...`
    """

    def __init__(
        self,
        *,
        directory: dict[str, Any] | None = None,
        tls: bool = True,
        port: int = 0,
        latency_ms: float = 0,
        seed: int | None = None,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="tenantmail-emulator-")
        args = [
            sys.executable,
            "-m",
            "emulator",
            "--port",
            str(port),
            "--latency-ms",
            str(latency_ms),
            "--state-dir",
            self._tmp.name,
        ]
        if not tls:
            args.append("--no-tls")
        if seed is not None:
            args += ["--seed", str(seed)]
        if directory is not None:
            path = os.path.join(self._tmp.name, "directory.json")
            with open(path, "w", encoding="utf-8") as fh:
                json.dump(directory, fh)
            args += ["--directory", path]
        self.args = args + list(extra_args or [])
        self._env = env
        self.process: subprocess.Popen[str] | None = None
        self.handle: EmulatorHandle | None = None

    def __enter__(self) -> EmulatorHandle:
        self.process = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self._env
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], _START_TIMEOUT_S)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            self.__exit__(None, None, None)
            raise RuntimeError("emulator subprocess did not report ready")
        self.handle = _handle(json.loads(line))
        return self.handle

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.control.close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:
            for stream in (self.process.stdout, self.process.stderr):
                if stream is not None:
                    stream.close()
        self._tmp.cleanup()
