"""`python -m msrcnn.train --config=experiments/shapes.py --workdir=DIR [--config.x=y ...]`.

Trains the configured model, resuming from DIR's checkpoints if there are any, then evaluates
on the validation split and prints the table. The config file's `get_config(arg)` takes the
text after ':' (e.g. `--config=experiments/shapes.py:plain`).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from msrcnn import checkpointing, cli
from msrcnn.training import trainer

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiment config file", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, logs and results")
flags.mark_flags_as_required(["config", "workdir"])
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "call jax.distributed.initialize(): cluster auto-detection (SLURM, TPU pods, ...) or the "
    "three flags below",
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "number of processes")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index")


def initialize_distributed(coordinator_address=None, num_processes=None, process_id=None):
    """jax.distributed.initialize(), with gloo collectives when the processes run on CPU."""
    import jax

    if (jax.config.jax_platforms or "").startswith("cpu") or not _has_accelerator():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )


def _has_accelerator() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) for m in ("jax_cuda12_plugin", "libtpu"))


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value  # read while parsing the flags (cli.parse_flags)
    if _DISTRIBUTED.value or _COORDINATOR.value:
        initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    try:
        trainer.train_and_evaluate(config, _WORKDIR.value)
    except checkpointing.CheckpointWriteError as error:
        # Orbax's writer threads die noisily at interpreter shutdown after a failed write
        # (thousands of lines of "Event loop is closed"); end here so that the message is
        # the last thing printed. The complete checkpoints are on disk already.
        print(f"{type(error).__name__}: {error}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)


if __name__ == "__main__":
    cli.run(main)
