"""Mask Scoring R-CNN: backbone -> FPN -> RPN -> box, mask and MaskIoU heads.

The module only holds parameters and runs layers; everything between the layers (anchors,
proposals, RoIAlign, NMS, targets, losses, post-processing) is a pure function elsewhere, so
the meta-architecture is a set of small methods that `msrcnn.detector` composes (for the
trainer, inference and the pipeline view) under one jit:

    model.apply(variables, images, method=MaskScoringRCNN.pyramid)         -> {'P2'..'P6'}
    model.apply(variables, pyramid, method=MaskScoringRCNN.rpn)           -> logits, deltas
    model.apply(variables, box_features, method=MaskScoringRCNN.box)       -> logits, deltas
    model.apply(variables, mask_features, method=MaskScoringRCNN.mask)     -> mask logits
    model.apply(variables, mask_features, probs, method=MaskScoringRCNN.maskiou) -> MaskIoU

`mask_scoring=False` is plain Mask R-CNN: no MaskIoU parameters exist.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from msrcnn.models.fpn import FPN
from msrcnn.models.heads import BoxHead, MaskHead, MaskIoUHead, RPNHead
from msrcnn.models.layers import check_conv_impl
from msrcnn.models.resnet import ResNet

RPN_LEVELS = ("P2", "P3", "P4", "P5", "P6")
ROI_LEVELS = ("P2", "P3", "P4", "P5")


class MaskScoringRCNN(nn.Module):
    """Parameters and layers of (Mask Scoring) Mask R-CNN with a ResNet-FPN backbone.

    Attributes:
      num_classes: K foreground classes (class ids 1..K; 0 is background).
      depth: ResNet depth (50 or 101).
      width: ResNet base width (64; smaller only in tiny test models).
      stride_in_1x1: ResNet v1 stride placement instead of v1.5.
      norm: backbone norm, 'frozen_bn', 'bn' or 'gn'.
      freeze_at: backbone stages without gradient (2 = stem and res2, for pretrained weights).
      fpn_channels: pyramid width (256).
      num_anchors: anchors per location (3).
      box_hidden: box head FC width (1024).
      mask_convs: mask head conv count (4).
      mask_scoring: build the MaskIoU head (False -> plain Mask R-CNN).
      dtype: computation dtype (bfloat16 on accelerators); parameters are float32 and every
        head's output is float32.
      conv_impl: how every convolution computes (`msrcnn.models.layers.Conv`): "xla" (XLA's
        own convolutions and gradients) or "cpu_matmul" (XLA:CPU workarounds,
        `msrcnn.ops.xla_cpu`); same parameters, and values up to float rounding. The config's
        "auto" is resolved before the model is built (`msrcnn.models.build`).
    """

    num_classes: int
    depth: int = 50
    width: int = 64
    stride_in_1x1: bool = False
    norm: str = "frozen_bn"
    freeze_at: int = 2
    fpn_channels: int = 256
    num_anchors: int = 3
    box_hidden: int = 1024
    mask_convs: int = 4
    mask_scoring: bool = True
    dtype: Any = jnp.float32
    conv_impl: str = "xla"

    def setup(self):
        impl = check_conv_impl(self.conv_impl)
        self.backbone = ResNet(
            depth=self.depth,
            width=self.width,
            stride_in_1x1=self.stride_in_1x1,
            norm=self.norm,
            freeze_at=self.freeze_at,
            dtype=self.dtype,
            conv_impl=impl,
        )
        self.fpn = FPN(self.fpn_channels, dtype=self.dtype, conv_impl=impl)
        self.rpn_head = RPNHead(self.num_anchors, dtype=self.dtype, conv_impl=impl)
        self.box_head = BoxHead(self.num_classes, self.box_hidden, dtype=self.dtype)
        self.mask_head = MaskHead(
            self.num_classes, self.fpn_channels, self.mask_convs, dtype=self.dtype, conv_impl=impl
        )
        if self.mask_scoring:
            self.maskiou_head = MaskIoUHead(
                self.num_classes,
                self.fpn_channels,
                self.box_hidden,
                dtype=self.dtype,
                conv_impl=impl,
            )

    def pyramid(self, images, train: bool = False) -> dict[str, jax.Array]:
        """Normalised images [B, H, W, 3] (H, W multiples of 32) -> {'P2'..'P6'}."""
        return self.fpn(self.backbone(images, train))

    def rpn(self, pyramid: dict[str, jax.Array]):
        """-> (objectness logits, box deltas): one [B, H_l*W_l*A] / [B, H_l*W_l*A, 4] per level."""
        return self.rpn_head([pyramid[name] for name in RPN_LEVELS])

    def box(self, box_features):
        """[R, 7, 7, C] -> (class logits [R, K+1], class-specific deltas [R, K+1, 4])."""
        return self.box_head(box_features)

    def mask(self, mask_features, classes=None):
        """[R, 14, 14, C] -> mask logits [R, 28, 28, K], or [R, 28, 28] of `classes` [R]."""
        return self.mask_head(mask_features, classes)

    def maskiou(self, mask_features, mask_probs):
        """[R, 14, 14, C], [R, 28, 28] soft masks of the chosen class -> MaskIoU [R, K]."""
        if not self.mask_scoring:
            raise ValueError("this model was built with mask_scoring=False: no MaskIoU head")
        return self.maskiou_head(mask_features, mask_probs)

    def __call__(self, images, train: bool = False):
        """Runs every layer once (used to initialise all parameters)."""
        pyramid = self.pyramid(images, train)
        self.rpn(pyramid)
        num = 2
        box_features = jnp.zeros((num, 7, 7, self.fpn_channels), self.dtype)
        mask_features = jnp.zeros((num, 14, 14, self.fpn_channels), self.dtype)
        outputs = {"box": self.box(box_features), "mask": self.mask(mask_features)}
        if self.mask_scoring:
            outputs["maskiou"] = self.maskiou(mask_features, jnp.zeros((num, 28, 28)))
        return outputs


def tiny(num_classes: int, **overrides) -> MaskScoringRCNN:
    """A few-MFLOP variant with the full structure, for tests: ResNet with 2 blocks per stage at
    base width 8, 32-channel FPN, 64-wide box head, 2 mask convs."""
    fields = dict(depth=18, width=8, fpn_channels=32, box_hidden=64, mask_convs=2)
    fields.update(overrides)
    return MaskScoringRCNN(num_classes=num_classes, **fields)
