"""`tenantmail bench SCENARIO`: run benchmark scenarios, show progress, write JSON and a markdown table.

Scenarios: throughput (with the wire ceiling and the SDK peer), fairness, tokens, throttle, enqueue,
latency (one notification at a time), http_enqueue (the API under 32 concurrent clients), control_plane
(dispatch, claims and outcome writes with free Graph), quota (Exchange's recipient limit), scale (1, 2 and 4
worker processes, and what each message costs the workers, PostgreSQL and Redis), or all.
Each repetition starts its own Redis, PostgreSQL database, emulator and workers.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from benchmarks import control_plane, quota, report, scale, scenarios, throughput, user_facing

SCENARIOS = ("throughput", "fairness", "tokens", "throttle", "enqueue", "latency", "http_enqueue", "control_plane",
             "quota", "scale")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def _runner(name: str, small: bool, big: int | None) -> Callable[[Callable[[str], None]], dict[str, float]]:
    if name == "throughput":
        size = throughput.SMALL if small else throughput.FULL
        return lambda tick: throughput.run(size, tick)
    if name == "fairness":
        fair = scenarios.FairnessSize(big_messages=400, small_tenants=4, small_messages=3, latency_ms=20,
                                      workers=1, concurrency=8) if small else scenarios.FairnessSize()
        if big is not None:
            fair.big_messages = big
        return lambda tick: scenarios.run_fairness(fair, tick)
    if name == "tokens":
        tok = scenarios.TokensSize(tenants=6, token_lifetime_s=4, waves=4, wave_interval_s=1.5, latency_ms=10,
                                   workers=1, concurrency=8) if small else scenarios.TokensSize()
        return lambda tick: scenarios.run_tokens(tok, tick)
    if name == "throttle":
        thr = scenarios.ThrottleSize(tenants=2, messages_per_tenant=15, fault_probability=0.3, latency_ms=20,
                                     workers=1, concurrency=8) if small else scenarios.ThrottleSize()
        return lambda tick: scenarios.run_throttle(thr, tick)
    if name == "latency":
        lat = user_facing.LatencySize(interval_ms=100, duration_s=3, latency_ms=20) if small else \
            user_facing.LatencySize()
        return lambda tick: user_facing.run_latency(lat, tick)
    if name == "http_enqueue":
        http = user_facing.HttpEnqueueSize(tenants=2, clients=4, batch=50, batch_notifications=200,
                                           single_posts=40) if small else user_facing.HttpEnqueueSize()
        return lambda tick: user_facing.run_http_enqueue(http, tick)
    if name == "control_plane":
        cp = control_plane.ControlPlaneSize(tenants=20, messages_per_tenant=5, workers=1, concurrency=8) if small \
            else control_plane.ControlPlaneSize()
        return lambda tick: control_plane.run_control_plane(cp, tick)
    if name == "scale":
        sc = scale.ScaleSize(tenants=4, messages=40, latency_ms=20, concurrency=8, worker_counts=(1, 2)) if small \
            else scale.ScaleSize()
        return lambda tick: scale.run_scale(sc, tick)
    if name == "quota":
        qs = quota.QuotaSize(daily_limit=40, notifications=30, window_s=10.0, workers=1, concurrency=8) if small \
            else quota.QuotaSize()
        return lambda tick: quota.run_quota(qs, tick)
    enq = scenarios.EnqueueSize(notifications=500, batch=100) if small else scenarios.EnqueueSize()
    return lambda tick: scenarios.run_enqueue(enq, tick)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `tenantmail bench`."""
    parser.add_argument("scenario", choices=(*SCENARIOS, "all"))
    parser.add_argument("--reps", type=int, default=3, help="repetitions per scenario (default 3)")
    parser.add_argument("--small", action="store_true", help="tiny sizes, seconds per scenario (smoke test)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where results go (default benchmarks/results)")
    parser.add_argument("--big-tenant-messages", type=int, default=None,
                        help="fairness: the big tenant's messages (full size 50,000)")


class Progress:
    """A one-line progress bar on stderr: repetitions done out of all, and what runs now."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self.total, self.done, self.stream, self.width = total, 0, stream, width
        self.started = time.monotonic()
        self._tty = stream.isatty()

    def note(self, label: str) -> None:
        """Show what is running now."""
        filled = self.width * self.done // max(self.total, 1)
        line = (f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
                f"{time.monotonic() - self.started:6.0f}s  {label}")
        self.stream.write(f"\r{line[:118]:<118}" if self._tty else line + "\n")
        self.stream.flush()

    def advance(self, label: str) -> None:
        """One repetition finished."""
        self.done += 1
        self.note(label)

    def close(self) -> None:
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()


def run(args: argparse.Namespace) -> int:
    """Run the chosen scenario(s); print the markdown table; 0 on success."""
    names = SCENARIOS if args.scenario == "all" else (args.scenario,)
    result: dict[str, Any] = {
        "command": _command(args),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"), "reps": args.reps,
        "small": args.small, "machine": report.machine(), "scenarios": {}}
    progress = Progress(len(names) * args.reps)
    try:
        for name in names:
            runner = _runner(name, args.small, getattr(args, "big_tenant_messages", None))
            reps = []
            for rep in range(args.reps):
                progress.note(f"{name} rep {rep + 1}/{args.reps}")
                reps.append(runner(lambda label, r=rep: progress.note(f"{label} (rep {r + 1}/{args.reps})")))
                progress.advance(f"{name} rep {rep + 1}/{args.reps} done")
            result["scenarios"][name] = {"reps": reps, "summary": report.summarize(reps)}
    finally:
        progress.close()
    json_path, md_path = report.write(args.out, result)
    sys.stdout.write(report.markdown(result))
    if "throughput" in result["scenarios"]:
        s = result["scenarios"]["throughput"]["summary"]
        sys.stdout.write(f"\ntenantmail {s['msgs_per_s']['median']} msg/s = {s['ratio_to_wire']['median']} x the "
                         f"wire ceiling ({s['wire_msgs_per_s']['median']}) and {s['ratio_to_peer']['median']} x "
                         f"the SDK peer ({s['peer_msgs_per_s']['median']}), medians of {args.reps}\n")
    sys.stdout.write(f"\nwrote {json_path} and {md_path}\n")
    return 0


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run, rebuilt from the parsed options."""
    words = ["tenantmail", "bench", args.scenario, "--reps", str(args.reps), "--out", str(args.out)]
    if args.small:
        words.append("--small")
    if getattr(args, "big_tenant_messages", None) is not None:
        words += ["--big-tenant-messages", str(args.big_tenant_messages)]
    return " ".join(shlex.quote(w) for w in words)


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks SCENARIO ...`"""
    parser = argparse.ArgumentParser(prog="tenantmail bench", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
