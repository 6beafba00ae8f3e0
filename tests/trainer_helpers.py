"""Helpers for tests/test_trainer.py: the test config, a TensorBoard event reader, and the
2-device worker that `test_sharded_step_matches_single_device` runs in a fresh interpreter:

    XLA_FLAGS=--xla_force_host_platform_device_count=2 \
        python -m tests.trainer_helpers DATA_DIR WORKDIR OUT.npz FAST_COMPILE

The worker trains one step of the test config with `trainer.train_and_evaluate` (so the mesh,
the state and batch shardings and the jitted step are the trainer's own) on a 2-device data
mesh, and writes the updated parameters, the logged losses and the shards each device got.
"""

from __future__ import annotations

import json
import os
import pathlib
import struct
import sys

# MSRCNN_TEST_FULL_XLA=1 compiles the modules that use the `fast_xla` fixture (conftest) with
# XLA's full optimisations.
FAST_COMPILE = os.environ.get("MSRCNN_TEST_FULL_XLA", "") != "1"

LOSS_TERMS = (
    "loss_objectness",
    "loss_rpn_box_reg",
    "loss_classifier",
    "loss_box_reg",
    "loss_mask",
    "loss_maskiou",
)


def tiny_config(data_dir, variant: str = "", **train):
    """experiments/tiny.py with its data in `data_dir` and a learning rate schedule that
    changes at every step (warmup over 10 steps) but does not depend on `num_steps`.

    With tiny's default `lr_steps` (fractions of num_steps) a 2-step run and a 3-step run use
    different schedules (boundaries round(2/3 * 2) = 1 and round(2/3 * 3) = 2), so a 2-step
    run resumed to 3 steps cannot equal an uninterrupted 3-step run; with this schedule it
    must, bit for bit, and every num_steps compiles the same step program. The warmup makes
    the learning rate depend on the optimizer's restored step count.
    """
    from experiments import tiny

    config = tiny.get_config(variant)
    config.data.data_dir = os.fspath(data_dir)
    config.train.update(dict(warmup_steps=10, warmup_factor=0.1, lr_steps=()))
    config.train.update(train)
    return config


def tiny_train_command(workdir, data_dir, num_steps: int, *flags) -> list[str]:
    """`python -m msrcnn.train` of experiments/tiny.py, for tests that run it as a process."""
    return [
        sys.executable,
        "-m",
        "msrcnn.train",
        "--config=experiments/tiny.py",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        f"--config.train.num_steps={num_steps}",
        *flags,
    ]


def read_scalars(event_dir) -> dict[str, dict[int, float]]:
    """tag -> {step: value} from the TensorBoard event files in `event_dir`.

    Event files are TFRecords: uint64 length, uint32 CRC of the length, the serialized Event,
    uint32 CRC of the data.
    """
    from tensorboardX.proto import event_pb2

    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(pathlib.Path(event_dir).glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack_from("<Q", data, pos)
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def read_metrics(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def flat_arrays(tree) -> dict[str, object]:
    """Pytree of arrays (nested dicts, lists, ...) -> {'a/b/0/c': numpy array}."""
    import jax
    import numpy as np

    def name(path) -> str:
        return "/".join(
            str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path
        )

    return {name(path): np.asarray(v) for path, v in jax.tree_util.tree_leaves_with_path(tree)}


def _sharded_worker(data_dir: str, workdir: str, out_path: str, fast_compile: bool) -> None:
    import jax

    if fast_compile:
        jax.config.update("jax_disable_most_optimizations", True)
    import numpy as np

    from msrcnn import checkpointing, sharding
    from msrcnn.training import trainer

    assert jax.device_count() == 2, jax.devices()
    shard_shapes = []
    global_batch = sharding.global_batch

    def recording_global_batch(mesh, local_batch):
        batch = global_batch(mesh, local_batch)
        shard_shapes.append(
            {
                key: sorted(
                    (shard.device.id, tuple(shard.data.shape)) for shard in x.addressable_shards
                )
                for key, x in batch.items()
            }
        )
        return batch

    sharding.global_batch = recording_global_batch
    trainer._evaluate_and_log = lambda *args, **kwargs: None  # the parent compares training
    result = trainer.train_and_evaluate(tiny_config(data_dir, num_steps=1), workdir)
    variables, _ = checkpointing.load_variables(os.path.join(workdir, "checkpoints"), step=1)
    report = {
        "step": result["step"],
        "mesh": {name: int(size) for name, size in sharding.data_mesh().shape.items()},
        "shard_shapes": shard_shapes,
    }
    np.savez(
        out_path,
        report=json.dumps(report),
        **{"param:" + k: v for k, v in flat_arrays(variables["params"]).items()},
    )


if __name__ == "__main__":
    _, data_dir_arg, workdir_arg, out_arg, fast_arg = sys.argv
    _sharded_worker(data_dir_arg, workdir_arg, out_arg, fast_arg == "1")
