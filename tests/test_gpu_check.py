"""benchmarks/gpu_check.py: without CUDA it says so in one line and exits 0; its items run (on the
CPU, in its development mode) and print one JSON object."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}  # no GPU, even on a GPU machine
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_without_cuda_one_line_and_exit_0() -> None:
    proc = _run()
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0], proc.stdout


def test_items_run_and_print_one_json_object(tmp_path) -> None:
    """A few items in the CPU development mode: the runner, the JSON and the exit code."""
    out = tmp_path / "check.json"
    proc = _run("--device", "cpu", "--only", "attack/fgsm", "--only", "train/standard/none", "--out", str(out),
                timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert doc == json.loads(out.read_text())
    assert [i["item"] for i in doc["items"]] == ["train/standard/none/eager", "attack/fgsm", "attack/fgsm/randomized"]
    assert all(i["ok"] and i["img_s"] > 0 for i in doc["items"]), doc["items"]
    assert doc["summary"]["failed"] == 0 and doc["summary"]["passed"] == 3
