"""Normalisation layers selectable by name: frozen BN (an affine), BN, GroupNorm."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

NORMS = ("frozen_bn", "bn", "gn")


class FrozenBatchNorm(nn.Module):
    """BatchNorm with statistics folded into a per-channel affine: y = x * scale + bias.

    Pretrained ImageNet / COCO weights are imported with their running statistics folded in
    (scale = gamma / sqrt(var + eps), bias = beta - mean * scale); the optimizer must leave
    these parameters alone, as detectron2 and torchvision freeze them.
    """

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train  # frozen: identical in training and inference
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        return x * scale.astype(self.dtype) + bias.astype(self.dtype)


class _TrainableNorm(nn.Module):
    """BN (batch statistics while training) or GroupNorm(32), behind one call signature."""

    kind: str
    dtype: Any = jnp.float32
    zero_scale: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        scale_init = nn.initializers.zeros if self.zero_scale else nn.initializers.ones
        if self.kind == "bn":
            norm = nn.BatchNorm(
                use_running_average=not train,
                momentum=0.9,
                epsilon=1e-5,
                dtype=self.dtype,
                scale_init=scale_init,
                name="norm",
            )
            return norm(x)
        # 32 groups (Wu & He 2018); narrow test models use the largest divisor of C below it.
        groups = math.gcd(x.shape[-1], 32)
        return nn.GroupNorm(
            num_groups=groups, epsilon=1e-5, dtype=self.dtype, scale_init=scale_init
        )(x)


def norm_layer(kind: str, name: str, dtype: Any = jnp.float32, zero_scale: bool = False):
    """A norm module by name: 'frozen_bn', 'bn' or 'gn'."""
    if kind == "frozen_bn":
        # No zero init: frozen parameters would keep a zeroed residual branch dead forever.
        return FrozenBatchNorm(dtype=dtype, name=name)
    if kind in ("bn", "gn"):
        return _TrainableNorm(kind, dtype=dtype, zero_scale=zero_scale, name=name)
    raise ValueError(f"unknown norm {kind!r}; choose one of {NORMS}")
