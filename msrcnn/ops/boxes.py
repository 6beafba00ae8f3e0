"""Box geometry: format conversions, area, clipping, pairwise IoU and the box coder.

Boxes are `[..., 4]` float32 in absolute pixels of the network input. The canonical format is
xyxy = (x1, y1, x2, y2), with width x2 - x1 (no "+1", as torchvision and detectron2).
Geometry is always computed in float32, whatever dtype the network runs in.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

# torchvision / detectron2 clamp log-space size deltas so exp() cannot overflow.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def _f32(x):
    return jnp.asarray(x, jnp.float32)


def xyxy_to_cxcywh(boxes):
    """(x1, y1, x2, y2) -> (centre x, centre y, width, height). [..., 4] -> [..., 4]."""
    boxes = _f32(boxes)
    x1, y1, x2, y2 = jnp.moveaxis(boxes, -1, 0)
    w, h = x2 - x1, y2 - y1
    return jnp.stack([x1 + 0.5 * w, y1 + 0.5 * h, w, h], axis=-1)


def cxcywh_to_xyxy(boxes):
    """(centre x, centre y, width, height) -> (x1, y1, x2, y2). [..., 4] -> [..., 4]."""
    boxes = _f32(boxes)
    cx, cy, w, h = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def xyxy_to_xywh(boxes):
    """(x1, y1, x2, y2) -> COCO (x, y, width, height). [..., 4] -> [..., 4]."""
    boxes = _f32(boxes)
    return jnp.concatenate([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], axis=-1)


def xywh_to_xyxy(boxes):
    """COCO (x, y, width, height) -> (x1, y1, x2, y2). [..., 4] -> [..., 4]."""
    boxes = _f32(boxes)
    return jnp.concatenate([boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], axis=-1)


def box_area(boxes_xyxy):
    """Area of xyxy boxes; degenerate (inverted) boxes have area 0. [..., 4] -> [...]."""
    boxes_xyxy = _f32(boxes_xyxy)
    w = jnp.maximum(boxes_xyxy[..., 2] - boxes_xyxy[..., 0], 0.0)
    h = jnp.maximum(boxes_xyxy[..., 3] - boxes_xyxy[..., 1], 0.0)
    return w * h


def clip_boxes(boxes_xyxy, image_hw):
    """Clips xyxy boxes to an image of (height, width): x to [0, W], y to [0, H].

    Args:
      boxes_xyxy: [..., 4].
      image_hw: (height, width) as Python numbers or a traced array of shape [2] (per image).
    """
    boxes_xyxy = _f32(boxes_xyxy)
    hw = _f32(image_hw)
    # A per-image [..., 2] size broadcasts over the box axis that follows the batch axes.
    trailing = (1,) * (boxes_xyxy.ndim - 1 - (hw.ndim - 1))
    height = hw[..., 0].reshape(hw.shape[:-1] + trailing)
    width = hw[..., 1].reshape(hw.shape[:-1] + trailing)
    x1, y1, x2, y2 = jnp.moveaxis(boxes_xyxy, -1, 0)
    return jnp.stack(
        [
            jnp.clip(x1, 0.0, width),
            jnp.clip(y1, 0.0, height),
            jnp.clip(x2, 0.0, width),
            jnp.clip(y2, 0.0, height),
        ],
        axis=-1,
    )


def pairwise_intersection(boxes1_xyxy, boxes2_xyxy):
    """Intersection areas of every pair. [N, 4], [M, 4] -> [N, M]."""
    a, b = _f32(boxes1_xyxy), _f32(boxes2_xyxy)
    top_left = jnp.maximum(a[:, None, :2], b[None, :, :2])  # [N, M, 2]
    bottom_right = jnp.minimum(a[:, None, 2:], b[None, :, 2:])  # [N, M, 2]
    wh = jnp.maximum(bottom_right - top_left, 0.0)
    return wh[..., 0] * wh[..., 1]


def pairwise_iou(boxes1_xyxy, boxes2_xyxy):
    """IoU of every pair of xyxy boxes. [N, 4], [M, 4] -> [N, M].

    A pair whose union is empty (two degenerate boxes) has IoU 0, not NaN, so padded
    all-zero boxes are safe to feed through.
    """
    inter = pairwise_intersection(boxes1_xyxy, boxes2_xyxy)
    union = box_area(boxes1_xyxy)[:, None] + box_area(boxes2_xyxy)[None, :] - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def remove_small_boxes_mask(boxes_xyxy, min_size):
    """True where both sides are >= min_size, as torchvision `remove_small_boxes`.

    [..., 4] -> [...] bool.
    """
    boxes_xyxy = _f32(boxes_xyxy)
    w = boxes_xyxy[..., 2] - boxes_xyxy[..., 0]
    h = boxes_xyxy[..., 3] - boxes_xyxy[..., 1]
    return (w >= min_size) & (h >= min_size)


@dataclasses.dataclass(frozen=True)
class BoxCoder:
    """Encodes boxes as deltas relative to reference boxes, and decodes them back.

    The R-CNN parameterisation (torchvision `BoxCoder`, detectron2 `Box2BoxTransform`):
    dx = wx * (gx - px) / pw, dy = wy * (gy - py) / ph, dw = ww * log(gw / pw),
    dh = wh * log(gh / ph), with centres and sizes from xyxy boxes without "+1".
    Decoding clamps dw, dh at `scale_clamp` before exp().

    Attributes:
      weights: (wx, wy, ww, wh); (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for the box head.
      scale_clamp: upper bound for dw / ww and dh / wh before exponentiation.
    """

    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    scale_clamp: float = DEFAULT_SCALE_CLAMP

    def encode(self, target_boxes_xyxy, reference_boxes_xyxy):
        """Deltas that move each reference box onto its target. [..., 4], [..., 4] -> [..., 4]."""
        wx, wy, ww, wh = self.weights
        ref = xyxy_to_cxcywh(reference_boxes_xyxy)
        tgt = xyxy_to_cxcywh(target_boxes_xyxy)
        dx = wx * (tgt[..., 0] - ref[..., 0]) / ref[..., 2]
        dy = wy * (tgt[..., 1] - ref[..., 1]) / ref[..., 3]
        dw = ww * jnp.log(tgt[..., 2] / ref[..., 2])
        dh = wh * jnp.log(tgt[..., 3] / ref[..., 3])
        return jnp.stack([dx, dy, dw, dh], axis=-1)

    def decode(self, deltas, reference_boxes_xyxy):
        """Applies deltas to reference boxes. [..., 4] deltas, [..., 4] boxes -> [..., 4] xyxy.

        Deltas may carry extra leading axes relative to the boxes (e.g. per-class deltas
        [R, K, 4] with boxes [R, 1, 4]); shapes broadcast.
        """
        wx, wy, ww, wh = self.weights
        deltas = _f32(deltas)
        ref = xyxy_to_cxcywh(reference_boxes_xyxy)
        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        dw = jnp.minimum(deltas[..., 2] / ww, self.scale_clamp)
        dh = jnp.minimum(deltas[..., 3] / wh, self.scale_clamp)
        cx = dx * ref[..., 2] + ref[..., 0]
        cy = dy * ref[..., 3] + ref[..., 1]
        w = jnp.exp(dw) * ref[..., 2]
        h = jnp.exp(dh) * ref[..., 3]
        return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


# The two parameterisations of Faster R-CNN: RPN deltas relative to anchors, box head deltas
# relative to proposals (torchvision's and detectron2's weights).
RPN_BOX_CODER = BoxCoder((1.0, 1.0, 1.0, 1.0))
ROI_BOX_CODER = BoxCoder((10.0, 10.0, 5.0, 5.0))
