"""Prediction heads, one per file: RPN, box (2 FC), mask (4 conv + deconv) and MaskIoU.

Modules map arrays to arrays; losses, targets and post-processing live elsewhere. Layer names
follow torchvision where it has the layer, so imported weights map by name
(`msrcnn.weights.torchvision`).
"""

from msrcnn.models.heads.box_head import BoxHead
from msrcnn.models.heads.mask_head import MaskHead
from msrcnn.models.heads.maskiou_head import MaskIoUHead
from msrcnn.models.heads.rpn_head import RPNHead

__all__ = ["BoxHead", "MaskHead", "MaskIoUHead", "RPNHead"]
