"""`tenantmail soak` (benchmarks/soak.py): the slope verdict, and a one-minute run through the CLI that
must report every figure per sample and a slope per metric (their size is not judged here)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.soak import THRESHOLDS, slope_per_min, verdict
from tests.stack import ROOT


def test_slope_per_min_is_the_least_squares_slope() -> None:
    assert slope_per_min([(0, 1.0), (1, 3.0), (2, 5.0)]) == pytest.approx(2.0)
    assert slope_per_min([(0, 4.0), (1, 6.0), (2, 4.0), (3, 6.0)]) == pytest.approx(0.4)
    assert slope_per_min([(1, 5.0)]) == 0.0


def _samples(**growth_per_min: float) -> list[dict[str, float]]:
    return [{"minute": m, **{name: 100 + growth_per_min.get(name, 0.0) * m for name in THRESHOLDS}}
            for m in range(11)]


def test_soak_verdict_passes_flat_metrics_and_fails_one_that_grows() -> None:
    assert verdict(_samples())["ok"]
    grown = verdict(_samples(worker_open_fds=3.0))
    assert not grown["ok"] and grown["second_half_samples"] == 6
    assert [n for n, c in grown["metrics"].items() if not c["ok"]] == ["worker_open_fds"]
    # only the second half counts: warm-up growth that then stops is not a leak
    warm = [{**s, "worker_rss_mb": min(s["minute"], 4) * 50} for s in _samples()]
    assert verdict(warm)["ok"]


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_soak_for_a_minute_reports_every_figure_per_sample(pg_database: str, tmp_path: Path) -> None:
    # when: a one-minute soak sampled every 5 s runs through the CLI
    run = subprocess.run(
        [sys.executable, "-m", "tenantmail", "soak", "--minutes", "1", "--sample-s", "5", "--rate", "10",
         "--tenants", "4", "--json", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=280)

    # then: every sample has every figure as a number, and every metric has a slope and a threshold
    assert run.returncode in (0, 1), run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert len(result["samples"]) == 13 and result["enqueued"] == 600
    for sample in result["samples"]:
        for figure in (*THRESHOLDS, "minute", "sent", "workers"):
            assert isinstance(sample[figure], int | float) and not math.isnan(sample[figure]), figure
    assert set(result["verdict"]["metrics"]) == set(THRESHOLDS)
    assert all(set(c) == {"slope_per_min", "threshold_per_min", "ok"} for c in result["verdict"]["metrics"].values())
    assert result["ok"] == (run.returncode == 0)
    assert list(tmp_path.glob("soak-*.json"))
