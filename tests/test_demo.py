"""`tenantmail demo` on a fresh machine: no redis-server on the PATH, no settings; it brings its own."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stack import ROOT


@pytest.mark.slow
def test_demo_runs_without_redis_server_on_the_path(tmp_path: Path) -> None:
    # given a PATH on which no redis-server is found, and no settings at all
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    assert shutil.which("redis-server", path=str(empty_bin)) is None
    env = {"PATH": str(empty_bin), "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}

    # when the demo runs (from an empty directory: its state goes to ./var)
    done = subprocess.run([sys.executable, "-m", "tenantmail", "demo"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=110)

    # then it delivers through its own Redis-compatible server and the emulator
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "emulator outbox: 5 message(s) accepted by Graph, 1 by the SMTP relay" in done.stdout
    assert re.search(r"^contoso-ceo +held +1 ", done.stdout, re.M), done.stdout  # held for its admin, not failed
    assert "Traceback" not in done.stderr
    assert (tmp_path / "var" / "tenantmail.db").exists()
