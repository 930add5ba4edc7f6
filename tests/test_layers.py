"""The layers hold at run time: a production command loads neither the emulator nor the benchmarks."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from tests.stack import ROOT, wait_until


def _imported_top_level(log: str) -> set[str]:
    # `-X importtime` lines: "import time: self [us] | cumulative | imported package"
    names = {line.rsplit("|", 1)[-1].strip() for line in log.splitlines() if line.startswith("import time:")}
    return {name.split(".")[0] for name in names}


def test_starting_a_worker_imports_no_emulator_or_benchmarks_module(make_stack: Any) -> None:
    # given a stack (the emulator runs in the test process, not the worker's)
    stack = make_stack()
    log_path = stack.log_dir / "importtime.log"

    # when `tenantmail worker` starts and reports ready, with every import it makes logged
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "tenantmail", "worker",
                                 "--concurrency=2", "--hostname=layers@%h"],
                                env=stack.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        stack.procs.append(proc)
        wait_until(lambda: "worker.ready" in log_path.read_text(errors="replace"), timeout_s=60,
                   what="the worker to report ready")
    stack.stop()

    # then it loaded the product's layers and nothing of the emulator or the benchmarks
    imported = _imported_top_level(log_path.read_text(errors="replace"))
    assert {"shared", "transport", "worker", "tenantmail"} <= imported
    # (PyYAML may appear: kombu imports it when it is installed, for its optional yaml serializer)
    assert not imported & {"emulator", "benchmarks", "aiosmtpd", "trustme"}, sorted(imported)
