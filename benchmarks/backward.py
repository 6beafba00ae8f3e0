"""Forward vs backward of the train step's largest parts, msrcnn beside torchvision.

    python -m benchmarks.backward [--size=512x512] [--runs=7] [--threads=0]
                                  [--output=bench_out/backward.json]

The whole train step (benchmarks.train_step) says how far apart the two frameworks are; this
says where. Two components, each timed forward only and forward + backward, the backward
being the difference:

  * `backbone+FPN`: ResNet-50 with frozen BN, stem and res2 frozen, and the FPN (P2-P6), on
    one image of --size, loss = mean of squares of every pyramid level (the gradient then
    reaches every trainable conv, as the detection losses do). Same weights on both sides
    (tests/seeded_weights.py). msrcnn: the model's `pyramid` under jit, frozen parameters as
    constants (as msrcnn.training.train_step); torchvision: `_resnet_fpn_extractor(resnet50,
    trainable_layers=3)`, forward under `torch.no_grad`.
  * `conv3x3 256 @ P2`: one 3x3 conv 256 -> 256 at stride 4 of --size (the FPN's P2 output
    conv and the RPN conv on P2, the largest convs of the step): forward, forward + kernel
    gradient, forward + kernel and input gradients. msrcnn: the model's convolution
    (`msrcnn.models.layers.conv` with its `conv_impl`: on CPU `msrcnn.ops.xla_cpu.conv`,
    whose kernel gradient is one matmul per tap); torchvision: `torch.nn.Conv2d` (oneDNN on
    CPU).

Each figure is the median of --runs calls after two warm-up calls, torch with --threads
threads (0: all cores, as XLA:CPU uses).
"""

from __future__ import annotations

import os

import numpy as np

from benchmarks import ops, timing
from tests import seeded_weights

COLUMNS = [
    "component",
    "framework",
    "forward_ms",
    "backward_ms",
    "forward_backward_ms",
    "ratio_forward",
    "ratio_backward",
]


def _image(height: int, width: int) -> np.ndarray:
    """float32 [H, W, 3]: a normalised-looking image, the same on both sides."""
    return np.random.default_rng(0).normal(0.0, 1.0, (height, width, 3)).astype(np.float32)


def _row(component: str, framework: str, forward_s: float, both_s: float, **extra) -> dict:
    return {
        "component": component,
        "framework": framework,
        "forward_ms": forward_s * 1e3,
        "forward_backward_ms": both_s * 1e3,
        "backward_ms": (both_s - forward_s) * 1e3,
        **extra,
    }


def msrcnn_rows(height: int, width: int, runs: int) -> list[dict]:
    import jax
    import jax.numpy as jnp
    from flax import traverse_util

    from benchmarks.train_step import msrcnn_config
    from msrcnn.models import layers
    from msrcnn.models.build import build_model
    from msrcnn.models.ms_rcnn import MaskScoringRCNN
    from msrcnn.training import optim
    from msrcnn.weights import torchvision as tv_weights

    config = msrcnn_config(height, width, 1, "float32", False)
    model = build_model(config)
    variables, _ = tv_weights.convert_torchvision_state_dict(seeded_weights.state_dict(), config)
    # Gradients of the pyramid's trainable parameters only, as torch computes: the heads'
    # and the frozen ones would otherwise come back zero-filled (box head fc6 alone: 51 MB).
    pyramid = {k: v for k, v in variables["params"].items() if k in ("backbone", "fpn")}
    flat = traverse_util.flatten_dict(pyramid)
    frozen = traverse_util.flatten_dict(optim.frozen_mask(pyramid, config))
    trainable = jax.device_put({k: v for k, v in flat.items() if not frozen[k]})
    constants = jax.device_put({k: v for k, v in flat.items() if frozen[k]})
    images = jnp.asarray(_image(height, width)[None])

    def pyramid_loss(trainable, images):
        params = traverse_util.unflatten_dict({**trainable, **constants})
        levels = model.apply({"params": params}, images, True, method=MaskScoringRCNN.pyramid)
        return sum(jnp.mean(jnp.square(level)) for level in jax.tree.leaves(levels))

    forward = jax.jit(pyramid_loss)
    both = jax.jit(jax.value_and_grad(pyramid_loss))
    rows = [
        _row(
            "backbone+FPN",
            "msrcnn",
            timing.time_fn(lambda: forward(trainable, images), runs, warmup=2).median_s,
            timing.time_fn(lambda: both(trainable, images), runs, warmup=2).median_s,
        )
    ]

    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(1, height // 4, width // 4, 256)).astype(np.float32))
    kernel = jnp.asarray(rng.normal(0, 0.02, (3, 3, 256, 256)).astype(np.float32))

    def conv_loss(kernel, x):
        return jnp.mean(jnp.square(layers.conv(x, kernel, 1, 1, model.conv_impl)))

    conv_forward = jax.jit(conv_loss)
    kernel_grad = jax.jit(jax.value_and_grad(conv_loss))
    both_grads = jax.jit(jax.value_and_grad(conv_loss, argnums=(0, 1)))
    conv_forward_s = timing.time_fn(lambda: conv_forward(kernel, x), runs, warmup=2).median_s
    for name, fn in (("kernel grad", kernel_grad), ("kernel + input grads", both_grads)):
        rows.append(
            _row(
                f"conv3x3 256 @ P2, {name}",
                "msrcnn",
                conv_forward_s,
                timing.time_fn(lambda fn=fn: fn(kernel, x), runs, warmup=2).median_s,
            )
        )
    return rows


def torchvision_rows(height: int, width: int, runs: int, threads: int) -> list[dict]:
    import torch

    from benchmarks.train_step import torchvision_model

    torch.set_num_threads(threads or os.cpu_count() or 1)
    model = torchvision_model(height, width)  # the train-step benchmark's model and weights
    state = seeded_weights.state_dict()
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    backbone = model.backbone
    device = timing.torch_device()
    backbone.to(device).train()
    images = torch.from_numpy(_image(height, width)).permute(2, 0, 1)[None].to(device)

    def pyramid_loss():
        return sum(torch.mean(torch.square(level)) for level in backbone(images).values())

    def forward():
        with torch.no_grad():
            return pyramid_loss()

    def both():
        backbone.zero_grad(set_to_none=True)
        loss = pyramid_loss()
        loss.backward()
        return loss

    rows = [
        _row(
            "backbone+FPN",
            "torchvision",
            timing.time_fn(forward, runs, warmup=2, sync=timing.torch_sync).median_s,
            timing.time_fn(both, runs, warmup=2, sync=timing.torch_sync).median_s,
        )
    ]

    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(1, height // 4, width // 4, 256)).astype(np.float32))
    x = x.permute(0, 3, 1, 2).contiguous().to(device)
    conv = torch.nn.Conv2d(256, 256, 3, 1, 1, bias=False).to(device)

    def conv_forward():
        with torch.no_grad():
            return torch.mean(torch.square(conv(x)))

    def conv_both(inputs):
        conv.zero_grad(set_to_none=True)
        inputs.grad = None
        loss = torch.mean(torch.square(conv(inputs)))
        loss.backward()
        return loss

    conv_forward_s = timing.time_fn(conv_forward, runs, warmup=2, sync=timing.torch_sync).median_s
    x_with_grad = x.clone().requires_grad_(True)
    for name, inputs in (("kernel grad", x), ("kernel + input grads", x_with_grad)):
        both_s = timing.time_fn(
            lambda inputs=inputs: conv_both(inputs), runs, warmup=2, sync=timing.torch_sync
        ).median_s
        rows.append(_row(f"conv3x3 256 @ P2, {name}", "torchvision", conv_forward_s, both_s))
    return rows


def add_ratios(rows: list[dict]) -> None:
    """ratio_* = msrcnn time / torchvision time of the same component (msrcnn rows only)."""
    reference = {r["component"]: r for r in rows if r["framework"] == "torchvision"}
    for row in rows:
        other = reference.get(row["component"])
        if row["framework"] != "msrcnn" or other is None:
            continue
        row["ratio_forward"] = row["forward_ms"] / other["forward_ms"]
        row["ratio_backward"] = row["backward_ms"] / other["backward_ms"]


def main(argv=None) -> list[dict]:
    args = timing.side_by_side_parser(__doc__, "bench_out/backward.json").parse_args(argv)
    height, width = (int(v) for v in args.size.split("x"))
    rows = msrcnn_rows(height, width, args.runs)
    if not args.no_torchvision and ops._try_import_torch()[0] is not None:
        rows += torchvision_rows(height, width, args.runs, args.threads)
    add_ratios(rows)
    rows.sort(key=lambda r: (r["component"], r["framework"]))
    timing.report(rows, COLUMNS, args.output, args)
    return rows


if __name__ == "__main__":
    main()
