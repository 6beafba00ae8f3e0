"""Checkpoints on disk: orbax CheckpointManager directories holding variables and the config.

Layout: DIR/<step>/{variables, config}; `variables` is the Flax variables pytree (at least
`params`), `config` the ConfigDict as JSON so that a checkpoint rebuilds its own model.
"""

from __future__ import annotations

import json
import os

import ml_collections
import orbax.checkpoint as ocp


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


def load_variables(directory: str, step: int | None = None):
    """-> (variables, config) of `step` (default: the latest) in a checkpoint directory."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoint directory {directory!r}")
    with _manager(directory, create=False) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{directory!r} holds no checkpoint steps")
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                variables=ocp.args.StandardRestore(), config=ocp.args.JsonRestore()
            ),
        )
    return restored["variables"], ml_collections.ConfigDict(restored["config"])
