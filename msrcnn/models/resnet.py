"""ResNet-50/101 backbone (v1.5 by default) returning the C2..C5 feature maps.

Layer names follow torchvision (`conv1`, `bn1`, `layer1`..`layer4`, blocks `0..n`, `downsample`)
so weight conversion is a rename plus layout changes. Padding is explicit and symmetric, as in
PyTorch: Flax's 'SAME' pads stride-2 convolutions asymmetrically, which would shift every
feature by half a pixel relative to imported weights.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from msrcnn.models.layers import Conv
from msrcnn.models.norm import norm_layer

STAGE_BLOCKS = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def conv(features, kernel, stride, name, dtype, impl):
    """A bias-free PyTorch-padded convolution with He (fan-out) initialisation."""
    return Conv(
        features,
        kernel,
        stride,
        use_bias=False,
        dtype=dtype,
        kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
        impl=impl,
        name=name,
    )


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 channels) residual block.

    Attributes:
      width: channels of the 3x3 convolution; the block outputs 4 * width.
      stride: stride of the block (on the 3x3 conv in v1.5, on the first 1x1 in v1).
      stride_in_1x1: original ResNet v1 / Caffe2 placement of the stride.
      norm: "frozen_bn", "bn" or "gn" (see `msrcnn.models.norm`).
      dtype: computation dtype.
      conv_impl: "xla" or "cpu_matmul" (`msrcnn.models.layers.Conv`).
    """

    width: int
    stride: int = 1
    stride_in_1x1: bool = False
    norm: str = "frozen_bn"
    dtype: Any = jnp.float32
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x, train: bool = False):
        stride_1x1, stride_3x3 = (self.stride, 1) if self.stride_in_1x1 else (1, self.stride)
        out_channels = 4 * self.width
        impl = self.conv_impl
        y = conv(self.width, 1, stride_1x1, "conv1", self.dtype, impl)(x)
        y = nn.relu(norm_layer(self.norm, "bn1", self.dtype)(y, train))
        y = conv(self.width, 3, stride_3x3, "conv2", self.dtype, impl)(y)
        y = nn.relu(norm_layer(self.norm, "bn2", self.dtype)(y, train))
        y = conv(out_channels, 1, 1, "conv3", self.dtype, impl)(y)
        # Zero-init of the last norm's scale helps from-scratch training (Goyal et al. 2017).
        y = norm_layer(self.norm, "bn3", self.dtype, zero_scale=True)(y, train)
        if x.shape[-1] != out_channels or self.stride != 1:
            x = DownSample(
                out_channels, self.stride, self.norm, self.dtype, impl, name="downsample"
            )(x, train)
        return nn.relu(x + y)


class DownSample(nn.Module):
    """Projection shortcut: 1x1 conv with stride + norm (torchvision `downsample.0/.1`)."""

    features: int
    stride: int
    norm: str
    dtype: Any
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = conv(self.features, 1, self.stride, "0", self.dtype, self.conv_impl)(x)
        return norm_layer(self.norm, "1", self.dtype)(x, train)


class ResNet(nn.Module):
    """ResNet trunk. Input [B, H, W, 3] -> {'C2'..'C5'} at strides 4, 8, 16, 32.

    Attributes:
      depth: 50 or 101 (18 only for quick tests; it uses bottlenecks too, so it is not the
        classic basic-block ResNet-18).
      width: channels of the first stage's 3x3 convs (64 for the standard model).
      stride_in_1x1: put the stride in the first 1x1 conv (v1, Caffe2) instead of the 3x3 (v1.5).
      norm: "frozen_bn" (an affine, for pretrained weights), "bn" or "gn" (from scratch).
      freeze_at: stop gradients after this many stages (0 none, 1 the stem, 2 stem + res2, ...);
        those parameters must also be excluded from the optimizer.
      dtype: computation dtype (parameters stay float32).
      conv_impl: "xla" or "cpu_matmul" (`msrcnn.models.layers.Conv`).
    """

    depth: int = 50
    width: int = 64
    stride_in_1x1: bool = False
    norm: str = "frozen_bn"
    freeze_at: int = 2
    dtype: Any = jnp.float32
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, images, train: bool = False) -> dict[str, jax.Array]:
        x = conv(self.width, 7, 2, "conv1", self.dtype, self.conv_impl)(images.astype(self.dtype))
        x = nn.relu(norm_layer(self.norm, "bn1", self.dtype)(x, train))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        if self.freeze_at >= 1:
            x = jax.lax.stop_gradient(x)
        features = {}
        for stage, num_blocks in enumerate(STAGE_BLOCKS[self.depth]):
            for block in range(num_blocks):
                x = Bottleneck(
                    self.width * 2**stage,
                    stride=2 if (block == 0 and stage > 0) else 1,
                    stride_in_1x1=self.stride_in_1x1,
                    norm=self.norm,
                    dtype=self.dtype,
                    conv_impl=self.conv_impl,
                    name=f"layer{stage + 1}_{block}",
                )(x, train)
            if self.freeze_at >= stage + 2:
                x = jax.lax.stop_gradient(x)
            features[f"C{stage + 2}"] = x
        return features


def resnet_channels(width: int = 64, levels: Sequence[int] = (2, 3, 4, 5)) -> list[int]:
    """Output channels of C2..C5 for a bottleneck ResNet of the given base width."""
    return [4 * width * 2 ** (level - 2) for level in levels]


ResNet50 = functools.partial(ResNet, depth=50)
ResNet101 = functools.partial(ResNet, depth=101)
