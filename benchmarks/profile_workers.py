"""Where the workers' time goes: py-spy on every worker process during a long throughput run.

    python -m benchmarks.profile_workers OUT_DIR [--seconds 20] [--all-threads]

Runs the throughput scenario's stack (200 tenants, Graph latency 200 ms, 2 workers × 32 threads) with
60,000 messages, and once the warm-up is done records each worker with `py-spy record --gil` (only the
thread holding the GIL: where the CPU goes; `--all-threads` samples every thread, waits included) for
`--seconds`. The raw stacks are kept in OUT_DIR (`worker<n>.txt`); printed: the share of samples under each
of our functions (inclusive) and each package's share of the innermost frames (self).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.harness import bench_stack
from benchmarks.throughput import ThroughputSize, ours

OUR_PACKAGES = {"worker", "transport", "shared", "api", "tenantmail"}
_FRAME = re.compile(r"(.*) \((.*):\d+\)$")


def record(out: Path, seconds: float, gil: bool) -> dict[str, Any]:
    """Run the load, profile every worker; returns the run's throughput figures."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    size = ThroughputSize(messages_per_tenant=300)
    out.mkdir(parents=True, exist_ok=True)
    with bench_stack(tenants=size.tenants, latency_ms=size.latency_ms) as bench:
        result: dict[str, Any] = {}
        load = threading.Thread(target=lambda: result.update(ours(bench, size)))
        load.start()
        while not bench.workers or bench.terminal_count() < size.tenants:
            time.sleep(0.2)
        time.sleep(2)  # the measured enqueue has begun
        spies = [subprocess.Popen([spy, "record", "--pid", str(p.pid), "--duration", str(int(seconds)),
                                   "--rate", "200", "--format", "raw", "--nonblocking", *(["--gil"] if gil else []),
                                   "--output", str(out / f"worker{i}.txt")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
                 for i, p in enumerate(bench.workers)]
        for s in spies:
            s.wait()
        load.join()
    return result


def summarize(files: list[Path], top: int = 30) -> str:
    """Markdown: inclusive shares of our functions and self shares of packages."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for path in files:
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = [m.groups() for f in stack.split(";") if (m := _FRAME.match(f))]
            for name in {f"{file}:{func}" for func, file in frames if file.split("/")[0] in OUR_PACKAGES}:
                inclusive[name] += n
            if frames:
                file = frames[-1][1]
                own[file.split("/")[0] if "/" in file else file] += n
    if not total:
        return "no samples\n"
    lines = [f"{total} samples", "", "| our function (inclusive) | share |", "|---|---:|"]
    lines += [f"| `{k}` | {100 * v / total:.1f} % |" for k, v in inclusive.most_common(top)]
    lines += ["", "| package (self) | share |", "|---|---:|"]
    lines += [f"| {k} | {100 * v / total:.1f} % |" for k, v in own.most_common(15)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_workers", description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--all-threads", action="store_true", help="sample every thread, not only the GIL holder")
    args = parser.parse_args(argv)
    figures = record(args.out, args.seconds, gil=not args.all_threads)
    print(f"throughput during the profile: {figures.get('msgs_per_s')} msg/s, "
          f"worker CPU {figures.get('worker_cpu_s_per_1000_msgs')} s per 1,000 messages\n")
    print(summarize(sorted(args.out.glob("worker*.txt"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
