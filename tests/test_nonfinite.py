"""NaN injection, end to end through the trainer: the default stops with the step and every
loss term and never writes a checkpoint after the NaN; skip_nonfinite skips and counts."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest

from msrcnn import checkpointing
from msrcnn.training import trainer
from tests.trainer_helpers import tiny_config

# Tiny-model training: compile fast, share programs with the other modules (conftest).
pytestmark = pytest.mark.usefixtures("fast_xla")


@pytest.fixture
def no_eval(monkeypatch):
    monkeypatch.setattr(trainer, "_evaluate_and_log", lambda *args, **kwargs: None)


def _nan_config(tmp_path, **train):
    # A NaN loss weight makes the total loss NaN at every step while every term stays finite,
    # so the NaN reaches the gradients exactly as a diverging loss would.
    config = tiny_config(tmp_path / "tfds", num_steps=3, checkpoint_every=1, log_every=10, **train)
    config.train.loss_weights = {"loss_mask": math.nan}
    return config


def test_nan_stops_before_any_checkpoint(tmp_path, no_eval):
    config = _nan_config(tmp_path)
    with pytest.raises(FloatingPointError) as info:
        trainer.train_and_evaluate(config, str(tmp_path / "run"))
    message = str(info.value)
    # Step 1 is not a logging step (log_every=10): the tracker still names it.
    assert "non-finite loss at step 1" in message
    assert "loss=nan" in message and "loss_mask=" in message
    assert "Last good checkpoint: none" in message
    checkpoints = tmp_path / "run" / "checkpoints"
    assert not [p for p in checkpoints.iterdir() if p.name.isdigit()]


def test_skip_nonfinite_skips_counts_and_saves_finite_state(tmp_path, no_eval):
    config = _nan_config(tmp_path, skip_nonfinite=True)
    result = trainer.train_and_evaluate(config, str(tmp_path / "run"))
    assert result["step"] == 3
    assert result["metrics"]["skipped_nonfinite"] == 3
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        assert json.loads(f.readlines()[-1])["skipped_nonfinite"] == 3
    variables, _ = checkpointing.load_variables(str(tmp_path / "run" / "checkpoints"), 3)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(variables))
