"""What restoring refuses and how a full disk is reported, on small hand-made checkpoints
(no model is compiled): init checkpoints that do not fit, explicit re-initialisation, a
workdir written by another config, and a save that runs out of space."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msrcnn import checkpointing
from msrcnn.models.build import build_model
from msrcnn.training.train_state import TrainState
from tests.trainer_helpers import tiny_config


def _params(num_classes: int, mask_scoring: bool = True, value: float = 0.0):
    """Parameters of the tiny model with `num_classes`, every tensor filled with `value`."""
    config = tiny_config("/unused")
    config.model.num_classes = num_classes
    config.model.mask_scoring = mask_scoring
    model = build_model(config)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
    )
    return jax.tree.map(lambda s: np.full(s.shape, value, s.dtype), shapes)


@pytest.fixture(scope="module")
def four_class_checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("init") / "ckpt"
    checkpointing.save_variables(str(directory), {"params": _params(4, value=1.0)}, tiny_config(""))
    return str(directory)


def test_init_checkpoint_must_fit_exactly(four_class_checkpoint):
    with pytest.raises(ValueError) as info:
        checkpointing.load_init_params(four_class_checkpoint, _params(6))
    message = str(info.value)
    assert "does not fit the model" in message
    # The class layers, with both shapes: 4 classes + background vs 6 + background.
    assert "box_head/cls_score/kernel: (64, 5) != model (64, 7)" in message
    assert "box_head/bbox_pred/kernel: (64, 20) != model (64, 28)" in message
    assert "mask_head/mask_fcn_logits/kernel" in message
    assert "backbone" not in message  # only what differs


def test_init_checkpoint_missing_tensors_are_named(tmp_path):
    plain = tmp_path / "plain"
    checkpointing.save_variables(
        str(plain), {"params": _params(4, mask_scoring=False)}, tiny_config("")
    )
    with pytest.raises(ValueError) as info:
        checkpointing.load_init_params(str(plain), _params(4))
    message = str(info.value)
    assert "missing" in message and "maskiou_head/maskiou_fc1/kernel" in message


def test_named_reinitialisation_lists_what_it_replaced(four_class_checkpoint):
    fresh = _params(6, value=-2.0)
    params, reinitialized = checkpointing.load_init_params(
        four_class_checkpoint, fresh, reinitialize=("classes",)
    )
    assert reinitialized == [
        "box_head/bbox_pred/bias",
        "box_head/bbox_pred/kernel",
        "box_head/cls_score/bias",
        "box_head/cls_score/kernel",
        "mask_head/mask_fcn_logits/bias",
        "mask_head/mask_fcn_logits/kernel",
        "maskiou_head/maskiou/bias",
        "maskiou_head/maskiou/kernel",
    ]
    flat = checkpointing.flat_names(params)
    for name, value in flat.items():
        expected = -2.0 if name in reinitialized else 1.0  # fresh vs loaded from the checkpoint
        assert np.all(np.asarray(value) == expected), name
    assert flat["box_head/cls_score/kernel"].shape == (64, 7)


def test_reinitialise_prefix_that_names_nothing_is_an_error(four_class_checkpoint):
    with pytest.raises(ValueError, match=r"names no model parameter: \['box_head/cls_scores'\]"):
        checkpointing.load_init_params(
            four_class_checkpoint, _params(4), reinitialize=("box_head/cls_scores",)
        )


def test_reinitialising_one_layer_still_checks_the_others(four_class_checkpoint):
    # Only the classifier is named: the box regressor and mask logits still do not fit.
    with pytest.raises(ValueError) as info:
        checkpointing.load_init_params(
            four_class_checkpoint, _params(6), reinitialize=("box_head/cls_score",)
        )
    message = str(info.value)
    assert "box_head/bbox_pred/kernel" in message and "cls_score" not in message


def _stored(config) -> dict:
    return json.loads(config.to_json())


def test_config_drift_outside_the_model_needs_permission():
    stored = tiny_config("/data")
    changed = tiny_config("/data", learning_rate=0.02, num_steps=5)
    with pytest.raises(ValueError) as info:
        checkpointing.check_config_drift(_stored(stored), changed, "WORKDIR (step 2)")
    message = str(info.value)
    assert "WORKDIR (step 2) was written by a different config" in message
    assert "train.learning_rate: checkpoint 0.01 vs config 0.02" in message
    assert "train.num_steps: checkpoint 2 vs config 5" in message
    assert "--config.train.allow_config_change=True" in message

    changed.train.allow_config_change = True
    assert checkpointing.check_config_drift(_stored(stored), changed, "W") == [
        "train.learning_rate: 0.01 -> 0.02",
        "train.num_steps: 2 -> 5",
    ]
    assert checkpointing.check_config_drift(_stored(stored), tiny_config("/data"), "W") == []


def test_settings_newer_than_the_checkpoint_count_only_when_changed():
    # A checkpoint written before train.mask_slot_step existed.
    stored = _stored(tiny_config("/data"))
    del stored["train"]["mask_slot_step"]
    assert checkpointing.check_config_drift(stored, tiny_config("/data"), "W") == []
    with pytest.raises(ValueError, match=r"train.mask_slot_step: checkpoint None vs config 4"):
        checkpointing.check_config_drift(stored, tiny_config("/data", mask_slot_step=4), "W")


def test_model_drift_is_refused_even_when_allowed():
    changed = tiny_config("/data", "plain", allow_config_change=True)
    with pytest.raises(ValueError, match=r"different model \(model.mask_scoring: checkpoint True"):
        checkpointing.check_config_drift(_stored(tiny_config("/data")), changed, "W")


def _small_state(value: float) -> TrainState:
    params = {"layer": {"kernel": np.full((4, 4), value, np.float32)}}
    return TrainState(jnp.zeros((), jnp.int32), params, {"mu": params}, {})


def test_out_of_space_while_saving_is_clear_and_keeps_the_last_step(tmp_path, monkeypatch):
    """The write error as orbax reports it (tensorstore's ValueError carrying ENOSPC), raised
    when the next save waits for the failed one; the half-written step is removed. The real
    full disk is tests/test_disk_full.py."""
    directory = tmp_path / "checkpoints"
    config = tiny_config("/data")
    ckpt = checkpointing.TrainCheckpointer(str(directory), config)
    ckpt.save(1, _small_state(1.0), {"position": 1})
    ckpt.manager.wait_until_finished()
    (directory / "2.orbax-checkpoint-tmp").mkdir()  # what the failed write left behind

    def failing_save(*args, **kwargs):
        raise ValueError(
            'RESOURCE_EXHAUSTED: Error writing local file "x": Failed to write 1192975 bytes '
            "to file 29: No space left on device [os_error_code='28']"
        )

    monkeypatch.setattr(ckpt.manager, "save", failing_save)
    with pytest.raises(checkpointing.CheckpointWriteError) as info:
        ckpt.save(3, _small_state(3.0), {"position": 3})
    ckpt.close()  # does not wait for, nor raise, the failed write again
    message = str(info.value)
    assert info.value.errno == 28
    assert f"no space left on device while writing a checkpoint to {directory}" in message
    assert "half-written step(s) removed: 2" in message
    assert "The last complete checkpoint, step 1, is intact" in message
    assert "rerun the same command to resume" in message
    assert sorted(os.listdir(directory)) == ["1"]
    variables, _ = checkpointing.load_variables(str(directory))
    np.testing.assert_array_equal(variables["params"]["layer"]["kernel"], np.ones((4, 4)))


def test_other_save_errors_pass_through_unchanged(tmp_path, monkeypatch):
    ckpt = checkpointing.TrainCheckpointer(str(tmp_path / "checkpoints"), tiny_config("/data"))

    def failing_save(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(ckpt.manager, "save", failing_save)
    with pytest.raises(PermissionError):
        ckpt.save(1, _small_state(1.0), {"position": 1})
    ckpt.close()
