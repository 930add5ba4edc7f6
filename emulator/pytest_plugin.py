"""pytest fixtures: `emulator` (per test) and `emulator_session` (per session, reset per use).

Register with `pytest_plugins = ["emulator.pytest_plugin"]`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from emulator.control_client import EmulatorHandle
from emulator.directory import demo_directory
from emulator.testing import running_emulator


@pytest.fixture
def emulator() -> Iterator[EmulatorHandle]:
    """A fresh TLS emulator on a free port with the demo directory, stopped after the test."""
    with running_emulator(directory=demo_directory()) as handle:
        yield handle


@pytest.fixture(scope="session")
def emulator_session_server() -> Iterator[EmulatorHandle]:
    """One TLS emulator for the whole session (use `emulator_session` for a clean state)."""
    with running_emulator(directory=demo_directory()) as handle:
        yield handle


@pytest.fixture
def emulator_session(emulator_session_server: EmulatorHandle) -> Iterator[EmulatorHandle]:
    """The session emulator, reset and with the demo directory restored before each test."""
    emulator_session_server.reset()
    emulator_session_server.set_directory(demo_directory())
    emulator_session_server.set_config(**_DEFAULTS)
    yield emulator_session_server


_DEFAULTS = {
    "latency_ms": 0.0,
    "token_lifetime_s": 3599,
    "refresh_in_s": None,
    "mailbox_concurrency": 4,
    "concurrency_retry_after": "1",
    "requests_per_10min": 10_000,
    "recipients_per_day": 10_000,
    "recipient_window_s": 86_400.0,
    "external_recipients_per_day": None,
}
