"""Crash safety: a training process killed with SIGKILL at arbitrary moments (checkpointing
every step, so kills land during saves too) or stopped with SIGTERM resumes and ends with
parameters bit-identical to an uninterrupted run; half-written checkpoints are cleaned up."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from msrcnn import checkpointing
from tests.trainer_helpers import tiny_train_command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 6
pytestmark = pytest.mark.slow


def _command(workdir, data_dir):
    return tiny_train_command(
        workdir,
        data_dir,
        NUM_STEPS,
        "--config.train.checkpoint_every=1",
        "--config.train.keep_checkpoints=2",
    )


def _steps(workdir) -> list[int]:
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def _final_params(workdir):
    variables, _ = checkpointing.load_variables(os.path.join(workdir, "checkpoints"), NUM_STEPS)
    return jax.tree.map(np.asarray, variables["params"])


def _run(workdir, data_dir) -> subprocess.CompletedProcess:
    out = subprocess.run(
        _command(workdir, data_dir), cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _start(workdir, data_dir) -> subprocess.Popen:
    return subprocess.Popen(
        _command(workdir, data_dir),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_step(proc, workdir, step: int, timeout: float = 300.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if _steps(workdir) and max(_steps(workdir)) >= step:
            return
        if proc.poll() is not None:
            pytest.fail(f"training ended before step {step}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    pytest.fail(f"no checkpoint of step {step} within {timeout} s")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    data_dir = root / "tfds"
    _run(root / "uninterrupted", data_dir)  # also builds the dataset once for all runs
    return root, data_dir, _final_params(root / "uninterrupted")


def _assert_same(a, b):
    for (path, x), y in zip(
        jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b), strict=True
    ):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("kill_after_step,delay", [(1, 0.0), (3, 0.15)])
def test_sigkill_then_resume_is_bit_identical(reference, kill_after_step, delay):
    root, data_dir, expected = reference
    workdir = root / f"killed_{kill_after_step}"
    proc = _start(workdir, data_dir)
    _wait_for_step(proc, workdir, kill_after_step)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    proc.stderr.close()
    assert max(_steps(workdir)) < NUM_STEPS  # it really was interrupted
    out = _run(workdir, data_dir)
    assert "resumed from step" in out.stdout
    _assert_same(_final_params(workdir), expected)
    leftovers = [d for d in os.listdir(workdir / "checkpoints") if "tmp" in d]
    assert not leftovers, leftovers


def test_sigterm_saves_and_exits_cleanly(reference):
    root, data_dir, expected = reference
    workdir = root / "terminated"
    proc = _start(workdir, data_dir)
    _wait_for_step(proc, workdir, 2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    assert "stopped by SIGTERM after step" in stdout
    stopped = int(stdout.split("stopped by SIGTERM after step ")[1].split(";")[0])
    assert max(_steps(workdir)) == stopped < NUM_STEPS
    _run(workdir, data_dir)
    _assert_same(_final_params(workdir), expected)
