"""The MaskIoU head of Mask Scoring R-CNN: the IoU of each predicted mask with its ground truth.

torchvision has no such head; its layers are named `maskiou_fcn1..4`, `maskiou_fc1..2`,
`maskiou`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from msrcnn.models.heads._common import FC_INIT, roi_conv3x3


class MaskIoUHead(nn.Module):
    """Predicts the IoU of each predicted mask with its ground truth (Mask Scoring R-CNN).

    Input: the mask branch's RoI features [R, 14, 14, C] concatenated with a 2x2 max-pool of the
    chosen class's soft mask (sigmoid, not binarised) -> C + 1 channels. Three 3x3 conv-256 and
    one stride-2 3x3 conv-256 (14 -> 7), ReLU each; FC 1024, FC 1024, FC K (linear).

    Attributes:
      num_classes: K; one MaskIoU per foreground class, the caller picks the target / predicted
        class column.
      channels: conv width; hidden: FC width.
      dtype: computation dtype; output is float32.
      conv_impl: "xla" or "cpu_matmul" (`msrcnn.models.layers.Conv`).
    """

    num_classes: int
    channels: int = 256
    hidden: int = 1024
    dtype: Any = jnp.float32
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, roi_features, mask_probs):
        """[R, 14, 14, C] features, [R, 28, 28] mask probabilities -> MaskIoU [R, K]."""
        pooled = nn.max_pool(mask_probs[..., None], (2, 2), strides=(2, 2))  # [R, 14, 14, 1]
        x = jnp.concatenate([roi_features.astype(self.dtype), pooled.astype(self.dtype)], -1)
        conv = lambda name, stride=1: roi_conv3x3(
            self.channels, name, self.dtype, self.conv_impl, stride
        )
        for i in range(3):
            x = nn.relu(conv(f"maskiou_fcn{i + 1}")(x))
        x = nn.relu(conv("maskiou_fcn4", stride=2)(x))  # 7x7
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(
            nn.Dense(self.hidden, dtype=self.dtype, kernel_init=FC_INIT, name="maskiou_fc1")(x)
        )
        x = nn.relu(
            nn.Dense(self.hidden, dtype=self.dtype, kernel_init=FC_INIT, name="maskiou_fc2")(x)
        )
        iou = nn.Dense(
            self.num_classes,
            dtype=self.dtype,
            kernel_init=nn.initializers.normal(0.01),
            name="maskiou",
        )(x)
        return iou.astype(jnp.float32)
