"""`python -m msrcnn.evaluate --config=... --workdir=DIR [--step=N]`: COCO AP of a checkpoint.

Prints the table (bbox, segm by class score, segm by mask score) and the MaskIoU
calibration, and writes them to DIR/eval.json.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from msrcnn import checkpointing, cli, config_lib
from msrcnn import detector as detector_lib
from msrcnn.errors import ConfigError
from msrcnn.evaluation import runner

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file")
_WORKDIR = flags.DEFINE_string("workdir", None, "training directory (reads its checkpoints)")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: latest)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
    del argv
    from msrcnn.data import datasets  # data builders only when evaluating for real

    config = _CONFIG.value
    ckpt_dir = os.path.join(_WORKDIR.value, "checkpoints")
    variables, stored = checkpointing.load_variables(ckpt_dir, _STEP.value)
    if config_lib.model_identity(stored) != config_lib.model_identity(config):
        raise ConfigError(
            f"{ckpt_dir} was trained with another model config: {stored.model} vs {config.model}"
        )
    detector = detector_lib.from_config(config)
    data = datasets.load(config)
    variables = jax.tree.map(np.asarray, variables)
    result = runner.evaluate_variables(config, detector, variables, data)
    print(runner.format_results(result, _STEP.value))
    runner.write_results(result, os.path.join(_WORKDIR.value, "eval.json"))


if __name__ == "__main__":
    cli.run(main)
