"""Memory of one training step of a config, on paper: XLA's own buffer assignment.

    python -m benchmarks.train_memory [--config=experiments/coco.py] [--batch=1,2]
        [--dtype=bfloat16] [--hw=800,1344]

Lowers and compiles the trainer's jitted step (targets, sampling, NMS and the optimizer update
included) for the config's model at the given per-device batch and input size, without
running it or loading data, and prints XLA's `memory_analysis()`: parameters + optimizer
state (arguments), outputs, and temporaries (activations kept for the backward pass and
scratch). Compiled for the host CPU, so the figures are XLA:CPU's buffer assignment; a GPU
compile assigns buffers differently (fusion decisions differ), so treat them as an estimate
of the device memory a step needs, not a measurement on the device.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np

from msrcnn import detector as detector_lib
from msrcnn.training import optim, train_step
from msrcnn.training.train_state import TrainState


def load_config(path: str):
    name, _, arg = path.partition(":")
    spec = importlib.util.spec_from_file_location("experiment", name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def abstract_batch(config, batch: int, hw: tuple[int, int]) -> dict:
    m, s = config.train.max_instances, config.train.mask_size
    spec = jax.ShapeDtypeStruct
    return {
        "images": spec((batch, *hw, 3), jnp.uint8),
        "image_hw": spec((batch, 2), jnp.int32),
        "gt_boxes": spec((batch, m, 4), jnp.float32),
        "gt_classes": spec((batch, m), jnp.int32),
        "gt_masks": spec((batch, m, s, s), jnp.uint8),
        "gt_valid": spec((batch, m), jnp.bool_),
        "image_id": spec((batch,), jnp.int64 if jax.config.jax_enable_x64 else jnp.int32),
        "orig_hw": spec((batch, 2), jnp.int32),
    }


def step_memory(config, batch: int, hw: tuple[int, int]) -> dict[str, float]:
    detector = detector_lib.from_config(config)
    model = detector.model
    params = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
    )
    optimizer = optim.make_optimizer(config, params)
    state = jax.eval_shape(
        lambda p: TrainState(
            step=jnp.zeros((), jnp.int32),
            params=p,
            opt_state=optimizer.init(p),
            batch_stats={},
        ),
        params,
    )
    step = jax.jit(
        functools.partial(train_step.train_step, detector, config, optimizer), donate_argnums=(0,)
    )
    compiled = step.lower(state, abstract_batch(config, batch, hw)).compile()
    stats = compiled.memory_analysis()
    gib = 1024.0**3
    return {
        "arguments_gib": stats.argument_size_in_bytes / gib,
        "outputs_gib": stats.output_size_in_bytes / gib,
        "temporaries_gib": stats.temp_size_in_bytes / gib,
        "parameters": int(sum(np.prod(x.shape) for x in jax.tree.leaves(params))),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="experiments/coco.py")
    parser.add_argument("--batch", default="1,2")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--hw", default="800,1344")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    config.model.dtype = args.dtype
    hw = tuple(int(v) for v in args.hw.split(","))
    print(f"{args.config} at {hw[0]}x{hw[1]}, {args.dtype} compute, XLA:CPU buffer assignment")
    for batch in (int(b) for b in args.batch.split(",")):
        mem = step_memory(config, batch, hw)
        print(
            f"  batch {batch}/device: arguments {mem['arguments_gib']:.2f} GiB (params "
            f"{mem['parameters'] / 1e6:.1f} M + optimizer), temporaries "
            f"{mem['temporaries_gib']:.2f} GiB, outputs {mem['outputs_gib']:.2f} GiB"
        )


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main()
