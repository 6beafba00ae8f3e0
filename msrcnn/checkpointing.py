"""Checkpoints on disk: orbax CheckpointManager directories holding variables and the config.

Layout: DIR/<step>/{variables, config}; `variables` is the Flax variables pytree (at least
`params`), `config` the ConfigDict as JSON so that a checkpoint rebuilds its own model.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import orbax.checkpoint as ocp

from msrcnn.sharding import allgather_json


def _manager(directory: str, create: bool) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(create=create)
    return ocp.CheckpointManager(
        os.path.abspath(directory), item_names=("variables", "config"), options=options
    )


def save_variables(directory: str, variables, config: ml_collections.ConfigDict, step: int = 0):
    """Writes `variables` and `config` as step `step` of a checkpoint directory."""
    with _manager(directory, create=True) as manager:
        manager.save(
            step,
            args=ocp.args.Composite(
                variables=ocp.args.StandardSave(variables),
                config=ocp.args.JsonSave(json.loads(config.to_json())),
            ),
        )
        manager.wait_until_finished()


def _single_device_target(step_dir: str):
    """Shapes and dtypes of a step's `variables`, placed on this process's first device."""
    metadata = ocp.StandardCheckpointer().metadata(os.path.join(step_dir, "variables"))
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)


def load_variables(directory: str, step: int | None = None):
    """-> (variables, config) of `step` (default: the latest) in a checkpoint directory."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoint directory {directory!r}")
    with _manager(directory, create=False) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{directory!r} holds no checkpoint steps")
        # Restore onto this process's first device whatever devices wrote the checkpoint
        # (several GPUs, several hosts): a target of shapes and dtypes with that sharding.
        target = _single_device_target(os.path.join(str(manager.directory), str(step)))
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                variables=ocp.args.StandardRestore(target), config=ocp.args.JsonRestore()
            ),
        )
    return restored["variables"], ml_collections.ConfigDict(restored["config"])


def _shape_table(tree) -> dict[str, tuple]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in flat}


def check_same_structure(expected, found, what: str) -> None:
    """Raises ValueError naming every tensor missing, extra or of another shape."""
    want, have = _shape_table(expected), _shape_table(found)
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
        raise ValueError(f"{what} does not fit the model:\n" + "\n".join(parts))


def load_init_params(directory: str, expected_params):
    """Parameters for a fresh run from `directory` (e.g. `msrcnn.convert` output).

    Every tensor must be there with the model's shape: a partial or mismatched load is an
    error that lists the differences, never a silent partial initialisation.
    """
    variables, _ = load_variables(directory)
    params = variables["params"]
    check_same_structure(expected_params, params, f"init checkpoint {directory!r}")
    return jax.tree.map(lambda want, x: jax.numpy.asarray(x, want.dtype), expected_params, params)


def _iterator_state_to_json(state):
    """grain iterator states are bytes (DataLoader) or dicts (dataset iterators)."""
    if isinstance(state, bytes):
        return {"bytes": state.decode("utf-8")}
    return {"state": state}


def _iterator_state_from_json(payload):
    return payload["bytes"].encode("utf-8") if "bytes" in payload else payload["state"]


class TrainCheckpointer:
    """Training checkpoints: variables, optimizer state, data iterator position and config.

    The `variables` and `config` items have the same layout as `save_variables`, so a
    training directory's checkpoints load directly into `Predictor.from_checkpoint`. Saving
    is asynchronous (orbax writes to a temporary directory and renames it when complete, so
    a crash never leaves a half-written step that looks complete).
    """

    def __init__(self, directory: str, config: ml_collections.ConfigDict):
        self.config = config
        # Orbax writes each step into a temporary directory and renames it when complete;
        # cleanup_tmp_directories removes what a killed process left half-written.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=config.train.keep_checkpoints, create=True, cleanup_tmp_directories=True
        )
        self.manager = ocp.CheckpointManager(
            os.path.abspath(directory),
            item_names=("variables", "opt_state", "data", "config"),
            options=options,
        )

    def save(self, step: int, state, iterator_state) -> None:
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
            ),
        )

    def restore_latest(self, target_state):
        """-> (state, iterator_state) from the latest step, or None if there is none.

        Raises ValueError if the stored model config differs from the current one: orbax
        would otherwise restore what fits and leave the rest silently.
        """
        step = self.manager.latest_step()
        if step is None:
            return None
        stored = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        stored_model = stored["config"].get("model", {})
        current_model = json.loads(self.config.model.to_json())
        differing = sorted(
            k
            for k in set(stored_model) | set(current_model)
            if stored_model.get(k) != current_model.get(k)
        )
        if differing:
            details = ", ".join(
                f"{k}: checkpoint {stored_model.get(k)!r} vs config {current_model.get(k)!r}"
                for k in differing
            )
            raise ValueError(
                f"{self.manager.directory} holds checkpoints of a different model ({details}); "
                "use a new --workdir or restore the matching config"
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
        data = restored["data"]
        if "per_process" in data:
            positions = data["per_process"]
            if len(positions) != jax.process_count():
                raise ValueError(
                    f"{self.manager.directory} step {step} was written by {len(positions)} "
                    f"processes, this run has {jax.process_count()}: the data positions of "
                    "each process cannot be carried over; resume with the same process count"
                )
            data = positions[jax.process_index()]
        return state, _iterator_state_from_json(data)

    def close(self) -> None:
        """Waits for pending saves and closes; calling it again does nothing."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self.manager.wait_until_finished()
        self.manager.close()
