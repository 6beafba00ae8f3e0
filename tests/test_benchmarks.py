"""The benchmark entry point end to end on a small case: `python -m benchmarks.run` runs each
case in its own process and writes one JSON file with timings, compile time, trace count and
peak memory. bfloat16 is the GPU setting; here it exercises that path on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def test_run_writes_one_table_and_json(tmp_path):
    output = tmp_path / "run.json"
    command = [
        sys.executable,
        "-m",
        "benchmarks.run",
        "--modes=train",
        "--sizes=128x128",
        "--batches=1",
        "--dtype=bfloat16",
        "--runs=1",
        "--no_torchvision",
        f"--output={output}",
    ]
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "| mode | size | batch | framework |" in out.stdout
    rows = json.loads(output.read_text())["results"]
    assert [(r["framework"], r["model"]) for r in rows] == [
        ("msrcnn", "Mask R-CNN"),
        ("msrcnn", "MS R-CNN"),
    ]
    for row in rows:
        assert row["mode"] == "train" and row["size"] == "128x128" and row["dtype"] == "bfloat16"
        assert row["median_ms"] > 0 and row["compile_s"] > 0
        assert row["traces"] == 1  # one compilation for every step
        assert 0.2 < row["peak_mem_gib"] < 20  # the child's own peak RSS
        assert row["loss"] == row["loss"]  # finite (not NaN)
