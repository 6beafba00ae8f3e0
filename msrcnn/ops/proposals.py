"""RPN outputs -> region proposals, on device with static shapes (torchvision semantics).

Per image: the top `pre_nms_top_k` anchors of each level by objectness, decoded and clipped to
the (unpadded) image, tiny boxes dropped, NMS at 0.7 within each level, then the best
`post_nms_top_k` over all levels. Proposals carry no gradient (as in Faster R-CNN's
approximate joint training).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from msrcnn.ops import boxes as box_ops
from msrcnn.ops import nms as nms_ops


def generate_proposals(
    anchors: Sequence[np.ndarray],
    logits: Sequence[jax.Array],
    deltas: Sequence[jax.Array],
    image_hw: jax.Array,
    pre_nms_top_k: int,
    post_nms_top_k: int,
    nms_threshold: float = 0.7,
    min_size: float = 1e-3,
    score_threshold: float = 0.0,
):
    """Proposals of one image.

    Args:
      anchors: per level [N_l, 4] xyxy (static, from `msrcnn.ops.anchors.fpn_anchors`).
      logits: per level [N_l] objectness logits.
      deltas: per level [N_l, 4] box deltas relative to the anchors.
      image_hw: [2] (height, width) of the image inside the padded input; boxes clip to it.
      pre_nms_top_k: candidates kept per level before NMS (1000 at test, 2000 in training).
      post_nms_top_k: proposals kept per image after NMS.
      nms_threshold: IoU threshold of the per-level NMS.
      min_size: boxes with a side below this (after clipping) are dropped.
      score_threshold: minimum objectness probability (torchvision: 0.0).

    Returns:
      boxes: [post_nms_top_k, 4] float32 xyxy, by descending objectness; zeros in padding.
      scores: [post_nms_top_k] objectness probabilities (sigmoid); 0 in padding.
      valid: [post_nms_top_k] bool, True for real proposals (a prefix).
    """
    cand_boxes, cand_logits, cand_levels = [], [], []
    for level, (level_anchors, level_logits, level_deltas) in enumerate(
        zip(anchors, logits, deltas, strict=True)
    ):
        k = min(pre_nms_top_k, level_logits.shape[0])
        top_logits, top_idx = jax.lax.top_k(level_logits.astype(jnp.float32), k)
        top_anchors = jnp.asarray(level_anchors)[top_idx]
        cand_boxes.append(box_ops.RPN_BOX_CODER.decode(level_deltas[top_idx], top_anchors))
        cand_logits.append(top_logits)
        cand_levels.append(jnp.full((k,), level, jnp.int32))
    boxes = jax.lax.stop_gradient(box_ops.clip_boxes(jnp.concatenate(cand_boxes), image_hw))
    scores = jax.nn.sigmoid(jax.lax.stop_gradient(jnp.concatenate(cand_logits)))
    levels = jnp.concatenate(cand_levels)
    valid = box_ops.remove_small_boxes_mask(boxes, min_size) & (scores >= score_threshold)
    keep, keep_valid = nms_ops.batched_nms(
        boxes, scores, levels, nms_threshold, post_nms_top_k, valid=valid
    )
    boxes = jnp.where(keep_valid[:, None], boxes[keep], 0.0)
    scores = jnp.where(keep_valid, scores[keep], 0.0)
    return boxes, scores, keep_valid
