"""Multi-host on one machine: two CPU processes joined by jax.distributed (gloo collectives)
train the tiny config and end with the parameters of one process with the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess

import jax
import numpy as np
import pytest

from msrcnn import checkpointing
from tests.trainer_helpers import tiny_train_command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 3
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _command(workdir, data_dir, *extra):
    return tiny_train_command(workdir, data_dir, NUM_STEPS, "--config.train.batch_size=2", *extra)


def _params(workdir):
    variables, _ = checkpointing.load_variables(os.path.join(workdir, "checkpoints"), NUM_STEPS)
    return jax.tree.map(np.asarray, variables["params"])


def test_two_processes_equal_one(tmp_path):
    data_dir = tmp_path / "tfds"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    single = subprocess.run(
        _command(tmp_path / "one", data_dir),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]

    port = _free_port()
    procs = [
        subprocess.Popen(
            _command(
                tmp_path / "two",
                data_dir,
                f"--coordinator_address=localhost:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ),
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    # Process 0 alone prints the evaluation table; both processes trained.
    assert "segm (mask scoring)" in outputs[0][0]
    assert "segm (mask scoring)" not in outputs[1][0]

    one, two = _params(tmp_path / "one"), _params(tmp_path / "two")
    for (path, a), b in zip(
        jax.tree_util.tree_flatten_with_path(one)[0], jax.tree.leaves(two), strict=True
    ):
        # Same global batches; only the order of the gradient all-reduce may differ.
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))
