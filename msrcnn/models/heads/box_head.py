"""The box head: two FC layers, then class logits and class-specific box deltas.

Layer names follow torchvision (`fc6`, `fc7`, `cls_score`, `bbox_pred`) so imported weights map
by name.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from msrcnn.models.heads._common import FC_INIT


class BoxHead(nn.Module):
    """Two FC-1024 layers, then K+1 class logits and class-specific box deltas.

    Attributes:
      num_classes: K foreground classes; logits have K + 1 columns (0 is background).
      hidden: width of the two FC layers.
      dtype: computation dtype; outputs are float32.
    """

    num_classes: int
    hidden: int = 1024
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, roi_features):
        """[R, 7, 7, C] -> (class logits [R, K+1], deltas [R, K+1, 4])."""
        x = roi_features.reshape(roi_features.shape[0], -1)  # [R, 7*7*C], H,W,C order
        x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, kernel_init=FC_INIT, name="fc6")(x))
        x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, kernel_init=FC_INIT, name="fc7")(x))
        logits = nn.Dense(
            self.num_classes + 1,
            dtype=self.dtype,
            kernel_init=nn.initializers.normal(0.01),
            name="cls_score",
        )(x)
        deltas = nn.Dense(
            4 * (self.num_classes + 1),
            dtype=self.dtype,
            kernel_init=nn.initializers.normal(0.001),
            name="bbox_pred",
        )(x)
        deltas = deltas.reshape(x.shape[0], self.num_classes + 1, 4)
        return logits.astype(jnp.float32), deltas.astype(jnp.float32)
