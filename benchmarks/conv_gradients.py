"""Every convolution of the R50-FPN backbone, one by one: forward, kernel gradient and input
gradient, msrcnn beside torchvision.

    python -m benchmarks.conv_gradients [--size=512x512] [--runs=7] [--threads=0]
                                        [--no_torchvision]
                                        [--output=bench_out/conv_gradients.json]

benchmarks.backward says that the backbone + FPN backward is where msrcnn's train step loses
to torchvision; this says which convolutions, and which of their two gradients. The
convolutions are read from the model itself (every `msrcnn.models.layers.Conv` that
`MaskScoringRCNN.pyramid` calls on an image of --size, with its input shape, kernel, stride,
padding and implementation), grouped by shape, and each shape is timed alone on random data:

  * msrcnn: `msrcnn.models.layers.conv` under jit with the model's `conv_impl` (on CPU
    "cpu_matmul": `msrcnn.ops.xla_cpu.conv`; elsewhere XLA's own), forward, and the pullback
    of its output gradient to the kernel only and to the input only (XLA drops the other
    half of the custom VJP);
  * torchvision's side: `torch.nn.functional.conv2d` and `aten.convolution_backward` with
    one gradient asked for at a time (oneDNN on CPU), torch with --threads threads.

The `total` rows sum over the trainable convolutions (stem and res2 are frozen, as in the
train step), each shape times its count. They include the input gradients of the three
convolutions that read the frozen res2 output (res3's first 1x1 and its shortcut, the FPN's
C2 lateral), which neither train step computes: the same few milliseconds on both sides.
Ratios are msrcnn / torchvision. Each time is the median of --runs calls after two warm-ups.
"""

from __future__ import annotations

import collections
import dataclasses
import os

import numpy as np

from benchmarks import ops, timing

COLUMNS = [
    "conv",
    "count",
    "trainable",
    "framework",
    "forward_ms",
    "kernel_grad_ms",
    "input_grad_ms",
    "ratio_forward",
    "ratio_kernel_grad",
    "ratio_input_grad",
]
TIMES = ("forward_ms", "kernel_grad_ms", "input_grad_ms")


@dataclasses.dataclass(frozen=True)
class ConvShape:
    """One convolution of the model: NHWC input [1, height, width, in_ch], square kernel."""

    height: int
    width: int
    in_ch: int
    out_ch: int
    kernel: int
    stride: int
    padding: int
    trainable: bool
    impl: str = "xla"  # the model's conv_impl

    @property
    def name(self) -> str:
        k = self.kernel
        return f"{k}x{k} {self.in_ch}->{self.out_ch} s{self.stride} @ {self.height}x{self.width}"


def pyramid_convs(height: int, width: int) -> list[tuple[ConvShape, int]]:
    """(shape, count) of every conv `MaskScoringRCNN.pyramid` runs on one height x width
    image, in order of first call; traced abstractly (nothing is computed)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from flax import traverse_util

    from benchmarks.train_step import msrcnn_config
    from msrcnn.models.build import build_model
    from msrcnn.models.layers import Conv
    from msrcnn.models.ms_rcnn import MaskScoringRCNN
    from msrcnn.training import optim

    config = msrcnn_config(height, width, 1, "float32", False)
    model = build_model(config)
    images = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
    variables = jax.eval_shape(
        lambda x: model.init(jax.random.key(0), x, False, method=MaskScoringRCNN.pyramid), images
    )
    frozen = traverse_util.flatten_dict(optim.frozen_mask(variables["params"], config))
    calls = []

    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, Conv) and context.method_name == "__call__":
            k, stride, pad = module.kernel_size, module.strides, (module.kernel_size - 1) // 2
            _, h, w, c = args[0].shape
            trainable = not frozen[(*module.path, "kernel")]
            calls.append(
                ConvShape(h, w, c, module.features, k, stride, pad, trainable, module.impl)
            )
        return next_fun(*args, **kwargs)

    def apply(variables, x):
        with nn.intercept_methods(record):
            return model.apply(variables, x, False, method=MaskScoringRCNN.pyramid)

    jax.eval_shape(apply, variables, images)
    return list(collections.Counter(calls).items())  # insertion (call) order


def _inputs(shape: ConvShape, seed: int = 0):
    """float32 NHWC input, HWIO kernel and NHWC output gradient for `shape`."""
    rng = np.random.default_rng(seed)
    s = shape
    x = rng.normal(size=(1, s.height, s.width, s.in_ch)).astype(np.float32)
    kernel = rng.normal(0, 0.05, (s.kernel, s.kernel, s.in_ch, s.out_ch)).astype(np.float32)
    out_h = (s.height + 2 * s.padding - s.kernel) // s.stride + 1
    out_w = (s.width + 2 * s.padding - s.kernel) // s.stride + 1
    dy = rng.normal(size=(1, out_h, out_w, s.out_ch)).astype(np.float32)
    return x, kernel, dy


def msrcnn_times(shape: ConvShape, runs: int) -> dict[str, float]:
    import jax

    from msrcnn.models import layers

    x, kernel, dy = (jax.device_put(a) for a in _inputs(shape))
    stride, padding = shape.stride, shape.padding

    def forward(x, kernel):
        return layers.conv(x, kernel, stride, padding, shape.impl)

    def kernel_grad(x, kernel, dy):
        return jax.vjp(lambda k: forward(x, k), kernel)[1](dy)[0]

    def input_grad(x, kernel, dy):
        return jax.vjp(lambda v: forward(v, kernel), x)[1](dy)[0]

    times = {}
    for key, fn, args in (
        ("forward_ms", jax.jit(forward), (x, kernel)),
        ("kernel_grad_ms", jax.jit(kernel_grad), (x, kernel, dy)),
        ("input_grad_ms", jax.jit(input_grad), (x, kernel, dy)),
    ):
        times[key] = 1e3 * timing.time_fn(lambda fn=fn, a=args: fn(*a), runs, 2).median_s
    return times


def torchvision_times(shape: ConvShape, runs: int) -> dict[str, float]:
    import torch

    device = timing.torch_device()
    x, kernel, dy = (torch.from_numpy(a) for a in _inputs(shape))
    x = x.permute(0, 3, 1, 2).contiguous().to(device)
    weight = kernel.permute(3, 2, 0, 1).contiguous().to(device)  # HWIO -> OIHW
    dy = dy.permute(0, 3, 1, 2).contiguous().to(device)
    stride, padding = [shape.stride] * 2, [shape.padding] * 2

    def backward(mask):  # mask: which of (input, weight, bias) gradients to compute
        return torch.ops.aten.convolution_backward(
            dy, x, weight, None, stride, padding, [1, 1], False, [0, 0], 1, mask
        )

    calls = {
        "forward_ms": lambda: torch.nn.functional.conv2d(x, weight, None, stride, padding),
        "kernel_grad_ms": lambda: backward([False, True, False]),
        "input_grad_ms": lambda: backward([True, False, False]),
    }
    times = {}
    with torch.no_grad():
        for key, fn in calls.items():
            times[key] = 1e3 * timing.time_fn(fn, runs, 2, sync=timing.torch_sync).median_s
    return times


def add_totals_and_ratios(rows: list[dict]) -> list[dict]:
    """Appends per framework a `total` row (trainable convs, each time x count) and sets
    ratio_* on msrcnn rows from the torchvision row of the same conv."""
    totals = {}
    for row in rows:
        if not row["trainable"]:
            continue
        total = totals.setdefault(
            row["framework"],
            {"conv": "total", "count": 0, "trainable": True, "framework": row["framework"]}
            | dict.fromkeys(TIMES, 0.0),
        )
        total["count"] += row["count"]
        for key in TIMES:
            total[key] += row[key] * row["count"]
    rows = rows + list(totals.values())
    reference = {r["conv"]: r for r in rows if r["framework"] == "torchvision"}
    for row in rows:
        other = reference.get(row["conv"])
        if row["framework"] == "msrcnn" and other is not None:
            for key in TIMES:
                row["ratio_" + key.removesuffix("_ms")] = row[key] / other[key]
    return rows


def main(argv=None) -> list[dict]:
    args = timing.side_by_side_parser(__doc__, "bench_out/conv_gradients.json").parse_args(argv)
    height, width = (int(v) for v in args.size.split("x"))
    with_torch = not args.no_torchvision and ops._try_import_torch()[0] is not None
    if with_torch:
        import torch

        torch.set_num_threads(args.threads or os.cpu_count() or 1)
    rows = []
    for shape, count in pyramid_convs(height, width):
        frameworks = [("msrcnn", msrcnn_times)]
        frameworks += [("torchvision", torchvision_times)] if with_torch else []
        for framework, measure in frameworks:
            row = {"conv": shape.name, "count": count, "trainable": shape.trainable}
            rows.append(row | {"framework": framework} | measure(shape, args.runs))
    rows = add_totals_and_ratios(rows)
    timing.report(rows, COLUMNS, args.output, args)
    return rows


if __name__ == "__main__":
    main()
