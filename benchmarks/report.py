"""Results: median/min/max over repetitions, the machine and versions, written as JSON and markdown."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("celery", "kombu", "redis", "aiohttp", "msal", "SQLAlchemy", "psycopg", "uvloop", "msgraph-sdk",
            "msgraph-core", "azure-identity", "httpx")


def summarize(reps: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per figure: median, min and max over the repetitions (figures every repetition has)."""
    keys = [k for k in reps[0] if all(k in r for r in reps)]
    return {k: {"median": _round(statistics.median(r[k] for r in reps)),
                "min": _round(min(r[k] for r in reps)), "max": _round(max(r[k] for r in reps))} for k in keys}


def _round(x: float) -> float:
    return round(x, 3) if isinstance(x, float) else x


def machine() -> dict[str, Any]:
    """What ran it: CPU model and count, memory, OS, Python, package and server versions."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    versions["redis-server"] = _first_line(["redis-server", "--version"])
    versions["postgresql"] = _postgres_version()
    return {"cpu": cpu, "cpus": os.cpu_count(), "memory_gb": round(mem_kb / 1024 / 1024, 1),
            "os": platform.platform(), "python": platform.python_version(), "versions": versions}


def _first_line(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def _postgres_version() -> str:
    import psycopg

    from benchmarks.harness import PG_ADMIN_URL

    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return str(row[0]) if row else "unknown"
    except psycopg.Error:
        return "unavailable"


def write(out_dir: Path, result: dict[str, Any]) -> tuple[Path, Path]:
    """Write `bench-<time>.json` and `.md` into out_dir; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    json_path, md_path = out_dir / f"bench-{stamp}.json", out_dir / f"bench-{stamp}.md"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    md_path.write_text(markdown(result))
    return json_path, md_path


def markdown(result: dict[str, Any]) -> str:
    """The table: one row per figure of every scenario, then machine and versions."""
    lines = [f"Command: `{result['command']}`  ", f"Started {result['started_at']}, {result['reps']} "
             f"repetition(s), size {'small' if result['small'] else 'full'}.", "",
             "| scenario | figure | median | min | max |", "|---|---|---:|---:|---:|"]
    for name, scenario in result["scenarios"].items():
        for fig, s in scenario["summary"].items():
            lines.append(f"| {name} | {fig} | {s['median']} | {s['min']} | {s['max']} |")
    m = result["machine"]
    lines += ["", f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['memory_gb']} GB, {m['os']}, Python {m['python']}.",
              "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + "."]
    return "\n".join(lines) + "\n"
