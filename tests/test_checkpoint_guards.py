"""What restoring refuses and how a full disk is reported, on small hand-made checkpoints
(no model is compiled): init checkpoints that do not fit, explicit re-initialisation, a
workdir written by another config or for other labels, and a save that runs out of space;
and the label map that checkpoints carry (or, written before it was stored, fall back on)."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from msrcnn import checkpointing
from msrcnn.label_map import LabelMap
from msrcnn.models.build import build_model
from msrcnn.predictor import Predictor
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


LABELS = LabelMap(("cat", "dog", "bird", "fish"), (17, 2, 5, 40))


def test_saved_variables_carry_their_label_map(tmp_path):
    directory = str(tmp_path / "ckpt")
    config = tiny_config("")
    checkpointing.save_variables(directory, {"params": _params(4)}, config, labels=LABELS)
    _, stored, labels = checkpointing.load_checkpoint(directory)
    assert labels == LABELS
    assert json.loads(stored.to_json()) == json.loads(config.to_json())  # config untouched


def _write_old_layout(directory, items: dict, step: int = 0) -> None:
    """A step as msrcnn wrote it before the label map was stored: no `labels` item."""
    with ocp.CheckpointManager(str(directory), item_names=tuple(items)) as manager:
        manager.save(step, args=ocp.args.Composite(**items))
        manager.wait_until_finished()


def test_checkpoint_without_labels_takes_the_configs(tmp_path):
    """Older checkpoints and converted weights: the config's data.class_names and
    data.category_ids (convert's COCO ids, say), else "class k" and ids 1..K."""
    named = tiny_config("")
    named.data.class_names = LABELS.class_names
    named.data.category_ids = LABELS.category_ids
    unnamed = LabelMap(("class 1", "class 2", "class 3", "class 4"), (1, 2, 3, 4))
    for k, (config, expected) in enumerate(((named, LABELS), (tiny_config(""), unnamed))):
        directory = tmp_path / f"ckpt_{k}"
        _write_old_layout(
            directory,
            {
                "variables": ocp.args.StandardSave({"params": _params(4)}),
                "config": ocp.args.JsonSave(json.loads(config.to_json())),
            },
        )
        assert not (directory / "0" / "labels").exists()
        variables, _, labels = checkpointing.load_checkpoint(str(directory))
        assert labels == expected
        assert "box_head" in variables["params"]
        predictor = Predictor.from_checkpoint(str(directory))
        assert predictor.labels == expected
        assert list(predictor.category_ids) == list(expected.category_ids)


def test_predictor_labels_default_to_the_config_unless_given():
    config = tiny_config("")
    variables = {"params": _params(4)}
    assert Predictor(config, variables).labels == LabelMap.of_config(config)
    given = LabelMap(("a", "b", "c", "d"), (4, 5, 6, 7))
    assert Predictor(config, variables, given).labels == given


def test_label_map_json_round_trip_and_checks():
    assert LabelMap.from_json(json.loads(json.dumps(LABELS.to_json()))) == LABELS
    assert LabelMap(["a"], [np.int64(3)]).category_ids == (3,)
    with pytest.raises(ValueError, match="2 class names"):
        LabelMap(("a", "b"), (1,))
    config = tiny_config("")
    config.data.class_names = ("x", "y")  # names alone: ids 1..2
    assert LabelMap.of_config(config) == LabelMap(("x", "y"), (1, 2))


def test_drift_ignores_label_fields_the_old_trainer_filled_in():
    """Before the label map was an item the trainer wrote the dataset's labels into
    data.class_names / data.category_ids: a run that leaves them empty resumes such a
    workdir; a run that sets them (an input) still counts as different."""
    stored = _stored(tiny_config("/data"))
    stored["data"]["class_names"] = ["circle", "square", "triangle"]
    stored["data"]["category_ids"] = [1, 2, 3]
    assert checkpointing.check_config_drift(stored, tiny_config("/data"), "W") == []
    chosen = tiny_config("/data")
    chosen.data.category_ids = (1, 2, 4)
    with pytest.raises(ValueError, match=r"data.category_ids: checkpoint \[1, 2, 3\] vs config"):
        checkpointing.check_config_drift(stored, chosen, "W")


def _old_training_step(directory, config, labels: LabelMap | None) -> None:
    """A training step as the trainer wrote it before the label map was an item: the
    dataset's labels in the stored config's data fields."""
    stored = _stored(config)
    if labels is not None:
        stored["data"]["class_names"] = list(labels.class_names)
        stored["data"]["category_ids"] = list(labels.category_ids)
    state = _small_state(2.0)
    _write_old_layout(
        directory,
        {
            "variables": ocp.args.StandardSave(state.variables()),
            "opt_state": ocp.args.StandardSave(state.opt_state),
            "data": ocp.args.JsonSave({"per_process": [{"state": {"position": 2}}]}),
            "config": ocp.args.JsonSave(stored),
        },
        step=2,
    )


def _restore(directory, config, labels):
    ckpt = checkpointing.TrainCheckpointer(str(directory), config, labels)
    try:
        return ckpt.restore_latest(_small_state(0.0)), ckpt.changed_settings
    finally:
        ckpt.close()


def test_resume_of_a_workdir_written_before_labels_were_stored(tmp_path):
    directory = tmp_path / "checkpoints"
    _old_training_step(directory, tiny_config("/data"), LABELS)
    (state, position), changed = _restore(directory, tiny_config("/data"), LABELS)
    assert changed == [] and position == {"position": 2} and int(state.step) == 2
    np.testing.assert_array_equal(state.params["layer"]["kernel"], np.full((4, 4), 2.0))

    # The labels the old trainer recorded still guard the resume: another dataset's classes.
    other = LabelMap(("cat", "dog", "bird", "eel"), LABELS.category_ids)
    with pytest.raises(ValueError, match=r"labels.class_names: checkpoint \['cat'"):
        _restore(directory, tiny_config("/data"), other)
    _, changed = _restore(directory, tiny_config("/data", allow_config_change=True), other)
    assert changed == [
        f"labels.class_names: {list(LABELS.class_names)} -> {list(other.class_names)}"
    ]

    # Steps older still, without labels anywhere, resume with any.
    older = tmp_path / "older"
    _old_training_step(older, tiny_config("/data"), None)
    assert _restore(older, tiny_config("/data"), other)[1] == []


def test_training_checkpoints_store_labels_and_refuse_other_ones(tmp_path):
    directory = tmp_path / "checkpoints"
    config = tiny_config("/data")
    ckpt = checkpointing.TrainCheckpointer(str(directory), config, LABELS)
    ckpt.save(1, _small_state(1.0), {"position": 1})
    ckpt.close()
    assert checkpointing.load_checkpoint(str(directory))[2] == LABELS
    assert _restore(directory, config, LABELS)[1] == []
    reordered = LabelMap(LABELS.class_names, (2, 17, 5, 40))
    with pytest.raises(ValueError, match=r"labels.category_ids: checkpoint \[17, 2, 5, 40\]"):
        _restore(directory, config, reordered)
