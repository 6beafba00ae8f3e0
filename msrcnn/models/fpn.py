"""Feature Pyramid Network: C2..C5 -> P2..P6 with a shared channel count.

Names follow torchvision (`inner_blocks_i`, `layer_blocks_i` for lateral 1x1 and output 3x3
convs); P6 is a stride-2 max-pool of P5 with kernel 1 (torchvision `LastLevelMaxPool`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from msrcnn.models.layers import Conv

# torchvision initialises FPN convs with kaiming_uniform(a=1): uniform, gain 1, fan in.
_FPN_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


def upsample_nearest(x, size_hw: tuple[int, int]):
    """Nearest-neighbour resize of [..., H, W, C] to size_hw, as PyTorch `interpolate(nearest)`.

    Source index = floor(dst * in / out): an exact 2x repeat when sizes divide, and the same
    choice PyTorch makes when they do not (inputs that are not multiples of 32).
    """
    in_h, in_w = x.shape[-3], x.shape[-2]
    out_h, out_w = size_hw
    rows = np.floor(np.arange(out_h) * (in_h / out_h)).astype(np.int32).clip(0, in_h - 1)
    cols = np.floor(np.arange(out_w) * (in_w / out_w)).astype(np.int32).clip(0, in_w - 1)
    return jnp.take(jnp.take(x, rows, axis=-3), cols, axis=-2)


class FPN(nn.Module):
    """Top-down pyramid over backbone features.

    Attributes:
      channels: output channels of every level (256).
      dtype: computation dtype.
      conv_impl: "xla" or "cpu_matmul" (`msrcnn.models.layers.Conv`).
    """

    channels: int = 256
    dtype: Any = jnp.float32
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, features: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """{'C2'..'C5'} [B, H_l, W_l, C_l] -> {'P2'..'P6'} [B, H_l, W_l, channels]."""
        names = sorted(features)  # C2, C3, C4, C5
        conv = lambda k, name: Conv(
            self.channels,
            k,
            dtype=self.dtype,
            kernel_init=_FPN_INIT,
            impl=self.conv_impl,
            name=name,
        )
        laterals = [conv(1, f"inner_blocks_{i}")(features[n]) for i, n in enumerate(names)]
        top_down = laterals[-1]
        outputs = [conv(3, f"layer_blocks_{len(names) - 1}")(top_down)]
        for i in range(len(names) - 2, -1, -1):
            lateral = laterals[i]
            top_down = lateral + upsample_nearest(top_down, lateral.shape[-3:-1])
            outputs.insert(0, conv(3, f"layer_blocks_{i}")(top_down))
        pyramid = {f"P{int(n[1:])}": out for n, out in zip(names, outputs, strict=True)}
        last = int(names[-1][1:])
        # Kernel 1, stride 2: every other pixel of P5 (size ceil(n / 2)).
        pyramid[f"P{last + 1}"] = pyramid[f"P{last}"][..., ::2, ::2, :]
        return pyramid
