"""Checkpoints on disk: orbax CheckpointManager directories holding variables and the config.

Layout: DIR/<step>/{variables, config, labels}; `variables` is the Flax variables pytree (at
least `params`), `config` the ConfigDict as JSON so that a checkpoint rebuilds its own model,
`labels` the `LabelMap` as JSON (class names and dataset category ids). A step without
`labels` (written before it was stored, or by a converter that has none) takes the config's
(`LabelMap.of_config`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil

import flax.traverse_util as traverse_util
import jax
import ml_collections
import orbax.checkpoint as ocp

from msrcnn import config_lib
from msrcnn.errors import ConfigError, MissingInputError
from msrcnn.label_map import LabelMap, given_or_config
from msrcnn.sharding import allgather_json

LABELS = "labels"  # the item holding the label map


def _manager(directory: str, create: bool) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(create=create)
    return ocp.CheckpointManager(
        os.path.abspath(directory), item_names=("variables", "config", LABELS), options=options
    )


def save_variables(
    directory: str,
    variables,
    config: ml_collections.ConfigDict,
    step: int = 0,
    labels: LabelMap | None = None,
):
    """Writes `variables`, `config` and `labels` (default: the config's, `LabelMap.of_config`)
    as step `step` of a checkpoint directory."""
    labels = given_or_config(labels, config)
    with _manager(directory, create=True) as manager:
        manager.save(
            step,
            args=ocp.args.Composite(
                variables=ocp.args.StandardSave(variables),
                config=ocp.args.JsonSave(json.loads(config.to_json())),
                labels=ocp.args.JsonSave(labels.to_json()),
            ),
        )
        manager.wait_until_finished()


def _step_dir(manager: ocp.CheckpointManager, step: int) -> str:
    return os.path.join(str(manager.directory), str(step))


def _restore_with_labels(manager: ocp.CheckpointManager, step: int, **items) -> dict:
    """`manager.restore` of `items`, with the step's label map JSON under LABELS where the
    step has one (restoring an item a step lacks is an error)."""
    if os.path.isdir(os.path.join(_step_dir(manager, step), LABELS)):
        items[LABELS] = ocp.args.JsonRestore()
    return dict(manager.restore(step, args=ocp.args.Composite(**items)))


def _single_device_target(step_dir: str):
    """Shapes and dtypes of a step's `variables`, placed on this process's first device."""
    metadata = ocp.StandardCheckpointer().metadata(os.path.join(step_dir, "variables"))
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)


def load_checkpoint(directory: str, step: int | None = None):
    """-> (variables, config, labels) of `step` (default: the latest) in a checkpoint
    directory; `labels` is the config's (`LabelMap.of_config`) where the step has none."""
    if not os.path.isdir(directory):
        raise MissingInputError(f"no checkpoint directory {directory!r}")
    with _manager(directory, create=False) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise MissingInputError(f"{directory!r} holds no checkpoint steps")
        # Restore onto this process's first device whatever devices wrote the checkpoint
        # (several GPUs, several hosts): a target of shapes and dtypes with that sharding.
        target = _single_device_target(_step_dir(manager, step))
        restored = _restore_with_labels(
            manager,
            step,
            variables=ocp.args.StandardRestore(target),
            config=ocp.args.JsonRestore(),
        )
    config = ml_collections.ConfigDict(config_lib.upgrade_stored(restored["config"]))
    if LABELS in restored:
        labels = LabelMap.from_json(restored[LABELS])
    else:
        labels = LabelMap.of_config(config)
    return restored["variables"], config, labels


def load_variables(directory: str, step: int | None = None):
    """-> (variables, config) of `step` (default: the latest) in a checkpoint directory."""
    variables, config, _ = load_checkpoint(directory, step)
    return variables, config


def flat_names(tree) -> dict[str, object]:
    """{'backbone/conv1/kernel': leaf, ...} for every leaf of a nested-dict pytree."""
    return traverse_util.flatten_dict(tree, sep="/")


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + "/") for p in prefixes)


def check_same_structure(expected, found, what: str, ignore=()) -> None:
    """Raises ValueError naming every tensor missing, extra or of another shape (tensors under
    the `ignore` path prefixes excepted)."""
    want = {k: tuple(v.shape) for k, v in flat_names(expected).items() if not _under(k, ignore)}
    have = {k: tuple(v.shape) for k, v in flat_names(found).items() if not _under(k, ignore)}
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    common = sorted(set(want) & set(have))
    shapes = [f"{k}: {have[k]} != model {want[k]}" for k in common if have[k] != want[k]]
    if missing or extra or shapes:
        parts = []
        for title, items in (("missing", missing), ("unexpected", extra), ("shape", shapes)):
            if items:
                shown = "\n    ".join(items[:20]) + ("\n    ..." if len(items) > 20 else "")
                parts.append(f"  {len(items)} {title}:\n    {shown}")
        raise ConfigError(f"{what} does not fit the model:\n" + "\n".join(parts))


# `train.init_reinitialize` shorthand: the layers whose shapes depend on the class count.
CLASS_LAYERS = (
    "box_head/cls_score",
    "box_head/bbox_pred",
    "mask_head/mask_fcn_logits",
    "maskiou_head/maskiou",
)


def load_init_params(directory: str, fresh_params, reinitialize=()):
    """Parameters for a fresh run from `directory` (`msrcnn.convert` output or another run's
    checkpoints) -> (params, names of the re-initialised tensors).

    `fresh_params` are the model's freshly initialised parameters: they fix the expected
    names, shapes and dtypes. Every tensor must be in the checkpoint with the model's shape:
    a partial or mismatched load is an error that lists the differences, never a silent
    partial initialisation. The one way to start some layers afresh (fine-tuning with a new
    class count, say) is to name them: `reinitialize` holds parameter path prefixes
    ('box_head/cls_score'; 'classes' for all class-dependent layers) whose tensors stay as in
    `fresh_params`, whatever the checkpoint holds there. A prefix that names no parameter is
    an error (a typo must not quietly load the old layer).
    """
    prefixes = []
    for item in reinitialize:
        prefixes += CLASS_LAYERS if item == "classes" else [str(item).strip("/")]
    fresh = flat_names(fresh_params)
    unmatched = [p for p in prefixes if not any(_under(n, [p]) for n in fresh)]
    if unmatched:
        raise ConfigError(
            f"train.init_reinitialize names no model parameter: {unmatched}; parameter paths "
            f"look like {sorted(fresh)[:3]}"
        )
    variables, _ = load_variables(directory)
    check_same_structure(
        fresh_params, variables["params"], f"init checkpoint {directory!r}", ignore=prefixes
    )
    loaded = flat_names(variables["params"])
    reinitialized = sorted(n for n in fresh if _under(n, prefixes))
    params = {
        n: value if n in reinitialized else jax.numpy.asarray(loaded[n], value.dtype)
        for n, value in fresh.items()
    }
    return traverse_util.unflatten_dict(params, sep="/"), reinitialized


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full); the earlier steps are intact."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return self.args[1]


def is_out_of_space(error: BaseException | None) -> bool:
    """Whether `error` or one of its causes is ENOSPC. Orbax's array writes (tensorstore)
    report it as a ValueError whose text carries the OS error, not as an OSError."""
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        text = str(error)
        if "No space left on device" in text or "os_error_code='28'" in text:
            return True
        error = error.__cause__ or error.__context__
    return False


def _directory_bytes(path: str) -> int:
    return sum(
        os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files
    )


def _iterator_state_to_json(state):
    """grain iterator states are bytes (DataLoader) or dicts (dataset iterators)."""
    if isinstance(state, bytes):
        return {"bytes": state.decode("utf-8")}
    return {"state": state}


def _iterator_state_from_json(payload):
    return payload["bytes"].encode("utf-8") if "bytes" in payload else payload["state"]


# Settings that may differ on resume without being told: they decide how to resume (or how
# the model computes), not what.
_RESUME_SETTINGS = (
    "train.allow_config_change",
    *(f"model.{k}" for k in config_lib.COMPUTE_ONLY_MODEL_SETTINGS),
)
# Before the label map was an item of its own, the trainer wrote the dataset's into these.
_LABEL_SETTINGS = ("data.class_names", "data.category_ids")


def check_config_drift(
    stored: dict,
    config: ml_collections.ConfigDict,
    where: str,
    stored_labels: LabelMap | None = None,
    labels: LabelMap | None = None,
) -> list[str]:
    """Compares a checkpoint's config (and label map) with the run's; -> the differences
    ('key: old -> new').

    A different model is always an error naming the fields (orbax would restore what fits
    and leave the rest silently). Any other difference (data, schedule, steps) is an error
    too unless `train.allow_config_change` is set: a workdir belongs to one experiment, and a
    typo in a resumed command must not quietly turn it into another. A setting the checkpoint
    does not know (added to msrcnn after it was written) counts only if the run changed it
    from its default.

    The label maps, where both are given, compare as `labels.class_names` and
    `labels.category_ids`: a dataset whose classes changed is a different experiment too.
    `data.class_names` and `data.category_ids` that the run leaves empty do not count: the
    trainer once wrote the dataset's labels there (derived, not chosen), and the label maps
    compare those.
    """
    old = traverse_util.flatten_dict(stored, sep=".")
    new = traverse_util.flatten_dict(json.loads(config.to_json()), sep=".")
    for key in _LABEL_SETTINGS:
        if not new.get(key):
            old.pop(key, None)
            new.pop(key, None)
    if stored_labels is not None and labels is not None:
        old.update({f"labels.{k}": v for k, v in stored_labels.to_json().items()})
        new.update({f"labels.{k}": v for k, v in labels.to_json().items()})
    defaults = traverse_util.flatten_dict(json.loads(config_lib.base_config().to_json()), sep=".")
    newer_setting_at_default = lambda k: (
        k not in old and k in defaults and new.get(k) == defaults[k]
    )
    differing = sorted(
        k
        for k in set(old) | set(new)
        if old.get(k) != new.get(k)
        and k not in _RESUME_SETTINGS
        and not newer_setting_at_default(k)
    )

    def describe(keys):
        return ", ".join(f"{k}: checkpoint {old.get(k)!r} vs config {new.get(k)!r}" for k in keys)

    model_keys = ("model.", *(f"geometry.{k}" for k in config_lib.MODEL_GEOMETRY))
    model = [k for k in differing if k.startswith(model_keys)]
    if model:
        raise ConfigError(
            f"{where} holds checkpoints of a different model ({describe(model)}); use a new "
            "--workdir or restore the matching config"
        )
    if differing and not config.train.get("allow_config_change", False):
        raise ConfigError(
            f"{where} was written by a different config ({describe(differing)}). Rerun with "
            "the same settings, use a new --workdir, or pass "
            "--config.train.allow_config_change=True to resume with the new values."
        )
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differing]


def _stored_labels(stored: dict) -> LabelMap | None:
    """A training step's label map: its `labels` item, else (written before there was one)
    the labels its config recorded, else None."""
    if LABELS in stored:
        return LabelMap.from_json(stored[LABELS])
    config = ml_collections.ConfigDict(stored["config"])
    return LabelMap.of_config(config) if LabelMap.set_in(config) else None


def _place_like(value, target):
    """`value` on `target`'s devices with its sharding (as is where `target` has none)."""
    placement = getattr(target, "sharding", None)
    if placement is None:
        return value
    return jax.device_put(value, placement)


class TrainCheckpointer:
    """Training checkpoints: variables, optimizer state, data iterator position, config and
    label map (`labels`, default the config's: `LabelMap.of_config`).

    The `variables`, `config` and `labels` items have the same layout as `save_variables`, so
    a training directory's checkpoints load directly into `Predictor.from_checkpoint`. Saving
    is asynchronous (orbax writes to a temporary directory and renames it when complete, so
    a crash never leaves a half-written step that looks complete).
    """

    def __init__(
        self, directory: str, config: ml_collections.ConfigDict, labels: LabelMap | None = None
    ):
        self.config = config
        self.labels = given_or_config(labels, config)
        # Orbax writes each step into a temporary directory and renames it when complete;
        # cleanup_tmp_directories removes what a killed process left half-written.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=config.train.keep_checkpoints, create=True, cleanup_tmp_directories=True
        )
        self.manager = ocp.CheckpointManager(
            os.path.abspath(directory),
            item_names=("variables", "opt_state", "data", "config", LABELS),
            options=options,
        )
        self.changed_settings: list[str] = []  # accepted by the last restore_latest
        self._closed = False

    def save(self, step: int, state, iterator_state) -> None:
        """Starts writing `step` (asynchronously); a failure of the previous write surfaces
        here or in `close`, as CheckpointWriteError when the disk is full."""
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    variables=ocp.args.StandardSave(state.variables()),
                    opt_state=ocp.args.StandardSave(state.opt_state),
                    # Every process reads its own shard, so the positions of all are kept.
                    data=ocp.args.JsonSave(
                        {"per_process": allgather_json(_iterator_state_to_json(iterator_state))}
                    ),
                    config=ocp.args.JsonSave(json.loads(self.config.to_json())),
                    labels=ocp.args.JsonSave(self.labels.to_json()),
                ),
            )
        except Exception as error:  # re-raised, clearer when the disk is full
            self._write_failed(error)

    def _write_failed(self, error: BaseException):
        """Re-raises a failed save; out of space: removes the half-written step (which orbax
        never renamed into place) and says which complete checkpoint remains."""
        self._closed = True  # `close` must not wait for (and re-raise) the failed write again
        with contextlib.suppress(Exception):  # the first error is the one to report
            self.manager.close()
        if not is_out_of_space(error):
            raise error
        directory = str(self.manager.directory)
        partial = [n for n in os.listdir(directory) if ".orbax-checkpoint-tmp" in n]
        if jax.process_index() == 0:
            for name in partial:
                shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
        complete = sorted(int(n) for n in os.listdir(directory) if n.isdigit())
        free_mb = shutil.disk_usage(directory).free / 2**20
        size_mb = (
            _directory_bytes(os.path.join(directory, str(complete[-1]))) / 2**20 if complete else 0
        )
        raise CheckpointWriteError(
            f"no space left on device while writing a checkpoint to {directory} (half-written "
            f"step(s) removed: {', '.join(n.split('.')[0] for n in partial) or 'none'}). "
            + (
                f"The last complete checkpoint, step {complete[-1]}, is intact; "
                if complete
                else "There is no complete checkpoint yet; "
            )
            + f"a checkpoint takes about {size_mb:.1f} MB and {free_mb:.1f} MB are free. Free "
            "space (or lower train.keep_checkpoints) and rerun the same command to resume."
        ) from error

    def restore_latest(self, target_state):
        """-> (state, iterator_state) from the latest step, or None if there is none. Every
        leaf of the state is placed as in `target_state` (its shardings, where it has them).

        Raises ValueError if the stored config or label map differs from the current one
        (see `check_config_drift`); `self.changed_settings` lists the accepted differences.
        """
        step = self.manager.latest_step()
        if step is None:
            return None
        stored = _restore_with_labels(self.manager, step, config=ocp.args.JsonRestore())
        self.changed_settings = check_config_drift(
            config_lib.upgrade_stored(stored["config"]),
            self.config,
            f"{self.manager.directory} (step {step})",
            stored_labels=_stored_labels(stored),
            labels=self.labels,
        )
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                variables=ocp.args.StandardRestore(target_state.variables()),
                opt_state=ocp.args.StandardRestore(target_state.opt_state),
                data=ocp.args.JsonRestore(),
            ),
        )
        variables = restored["variables"]
        state = target_state.replace(
            step=jax.numpy.asarray(step, jax.numpy.int32),
            params=variables["params"],
            opt_state=restored["opt_state"],
            batch_stats=variables.get("batch_stats", {}),
        )
        # Every leaf placed as in the target (the step counter would otherwise be an
        # unplaced scalar, and the first step after a restart would compile the train step
        # for that placement, then again for the step's own output).
        state = jax.tree.map(_place_like, state, target_state)
        data = restored["data"]
        if "per_process" in data:
            positions = data["per_process"]
            if len(positions) != jax.process_count():
                raise ConfigError(
                    f"{self.manager.directory} step {step} was written by {len(positions)} "
                    f"processes, this run has {jax.process_count()}: the data positions of "
                    "each process cannot be carried over; resume with the same process count"
                )
            data = positions[jax.process_index()]
        return state, _iterator_state_from_json(data)

    def close(self) -> None:
        """Waits for pending saves and closes; calling it again does nothing."""
        if self._closed:
            return
        try:
            self.manager.wait_until_finished()
        except Exception as error:  # re-raised by _write_failed
            self._write_failed(error)
        self._closed = True
        self.manager.close()
