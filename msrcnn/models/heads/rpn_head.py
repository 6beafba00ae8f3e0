"""The RPN head: objectness and box deltas per anchor at every pyramid level.

Layer names follow torchvision (`conv`, `cls_logits`, `bbox_pred`) so imported weights map by
name.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from msrcnn.models.layers import Conv


class RPNHead(nn.Module):
    """Shared 3x3 conv + ReLU, then objectness (A) and box deltas (4A) per location.

    Applied to every pyramid level with the same weights.

    Attributes:
      num_anchors: anchors per location A (3 aspect ratios x 1 size for FPN).
      dtype: computation dtype; outputs are float32.
      conv_impl: "xla" or "cpu_matmul" (`msrcnn.models.layers.Conv`).
    """

    num_anchors: int = 3
    dtype: Any = jnp.float32
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, features: list[jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
        """[B, H_l, W_l, C] per level -> (logits [B, H_l*W_l*A], deltas [B, H_l*W_l*A, 4]).

        The flattening order (location-major, anchor-minor) is the anchors' order.
        """
        init = nn.initializers.normal(0.01)
        conv = lambda features, k, name: Conv(
            features, k, dtype=self.dtype, kernel_init=init, impl=self.conv_impl, name=name
        )
        shared = conv(features[0].shape[-1], 3, "conv")
        cls = conv(self.num_anchors, 1, "cls_logits")
        box = conv(4 * self.num_anchors, 1, "bbox_pred")
        logits, deltas = [], []
        for x in features:
            x = nn.relu(shared(x))
            batch = x.shape[0]
            logits.append(cls(x).astype(jnp.float32).reshape(batch, -1))
            deltas.append(box(x).astype(jnp.float32).reshape(batch, -1, 4))
        return logits, deltas
