"""Smoke test of the speed benchmarks: each runs with --quick (tiny models) in a subprocess and prints
one JSON document with its step/floor ratios. The ratios' values are not checked (a quick run on
a shared CPU is not a measurement); that they are there and well-formed is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_quick(script: str) -> dict:
    # 1 thread: a tiny workload on a loaded 2-core machine runs steadier (and no slower) on one
    proc = subprocess.run([sys.executable, f"benchmarks/{script}", "--quick", "--threads", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def check_ratio_fields(entry: dict, floor_parts: set[str]) -> None:
    for key in ("step_s", "floor_s", "ratio", "ratio_of_medians"):
        assert isinstance(entry[key], float) and entry[key] > 0, key
    assert set(entry["floor_parts_s"]) == floor_parts
    assert entry["floor_s"] == pytest.approx(sum(entry["floor_parts_s"].values()), abs=1e-3)
    assert entry["ratio"] == pytest.approx(entry["step_s"] / entry["floor_s"], rel=1e-2)


def test_bench_distill_quick_prints_step_over_floor_for_both_modes():
    out = run_quick("bench_distill.py")
    assert out["quick"] and out["threads"] == 1 and out["torch"]
    assert set(out["modes"]) == {"darht", "darht-official"}
    for mode, r in out["modes"].items():
        check_ratio_fields(r, {"attack", "teacher0", "teacher1", "update"})
        assert r["phase"] == "ce+kd" and 0 < r["M"] <= r["B"]
        assert out["summary"][f"{mode}_step_over_floor"] == r["ratio"]
    assert out["modes"]["darht-official"]["M"] == out["modes"]["darht-official"]["B"]  # one coin, attacked
    assert out["modes"]["darht"]["mc_samples"] > 1 and out["modes"]["darht-official"]["mc_samples"] == 1
    assert isinstance(out["summary"]["goal_met"], bool)


def test_bench_train_quick_prints_step_over_floor_for_trades_and_fat():
    out = run_quick("bench_train.py")
    assert set(out["methods"]) == {"trades", "fat"}
    check_ratio_fields(out["methods"]["trades"], {"clean", "attack", "update"})
    check_ratio_fields(out["methods"]["fat"], {"attack", "update"})
    for r in out["methods"].values():
        sizes = r["attack_batch_sizes"]
        assert sizes["done"] == sizes["needed"] and sizes["done_equals_needed"]  # no wasted attack work
    assert out["summary"]["trades_step_over_floor"] == out["methods"]["trades"]["ratio"]
