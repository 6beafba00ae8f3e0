"""RPN training targets: sampled anchor labels and box-regression targets, per image.

Semantics of torchvision's `RegionProposalNetwork.assign_targets_to_anchors` + its
`BalancedPositiveNegativeSampler` (equivalently detectron2's `RPN.label_and_sample_anchors`
with the default `BOUNDARY_THRESH = -1`):

  * each anchor is matched to the ground truth of highest IoU; IoU >= 0.7 is positive,
    IoU < 0.3 negative, in between ignored;
  * with `allow_low_quality=True` (Faster R-CNN's rule (i)), for every ground truth the anchors
    of highest IoU with it (ties included) are positive too, whatever their IoU;
  * 256 anchors are sampled per image, at most half positive, the rest negative;
  * regression targets are the matched ground truth encoded with weights (1, 1, 1, 1).

Anchors crossing the image border, or lying over the zero padding of the batch, are kept and
labelled like any other anchor: torchvision never removes them and detectron2 keeps them by
default (its `BOUNDARY_THRESH = -1`); only the original Faster R-CNN discarded them.

Differences, all for static shapes or robustness: padded ground truth (`gt_valid` False) never
matches; a ground truth with no overlapping anchor adds no low-quality match (see
`msrcnn.targets.matcher.Matcher`); an image without valid ground truth gets only negatives.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from msrcnn.ops.boxes import RPN_BOX_CODER, pairwise_iou
from msrcnn.ops.sampling import subsample_labels
from msrcnn.targets.matcher import Matcher

__all__ = ["rpn_targets"]


def rpn_targets(
    key,
    anchors,
    gt_boxes,
    gt_valid,
    batch_size_per_image: int = 256,
    positive_fraction: float = 0.5,
    thresholds: tuple[float, float] = (0.3, 0.7),
    allow_low_quality: bool = True,
):
    """Sampled anchor labels and regression targets of one image.

    Args:
      key: PRNG key of this image (for the sampling).
      anchors: [A, 4] xyxy anchors of all levels, concatenated in the order of the RPN outputs.
      gt_boxes: [M, 4] xyxy ground-truth boxes (padded).
      gt_valid: [M] bool, False for padding.
      batch_size_per_image: static number of anchors sampled per image.
      positive_fraction: static largest fraction of positives among them.
      thresholds: static (negative below, positive at or above) IoU thresholds.
      allow_low_quality: static; label each ground truth's best anchors positive.

    Returns:
      labels: [A] int32: 1 sampled positive, 0 sampled negative, -1 not sampled or ignored.
        `sum(labels == 1) == min(#positives, int(batch_size_per_image * positive_fraction))`
        and the negatives fill the rest of `batch_size_per_image` as far as they exist.
      box_targets: [A, 4] float32 deltas (weights 1, 1, 1, 1) from each anchor to its matched
        ground truth where `labels == 1`, zeros elsewhere. No gradient.
    """
    anchors = jax.lax.stop_gradient(jnp.asarray(anchors, jnp.float32))
    gt_boxes = jax.lax.stop_gradient(jnp.asarray(gt_boxes, jnp.float32))
    gt_valid = jnp.asarray(gt_valid, bool)
    low, high = thresholds
    matcher = Matcher((low, high), (0, -1, 1), allow_low_quality_matches=allow_low_quality)
    matches, match_labels = matcher(pairwise_iou(gt_boxes, anchors), gt_valid)

    sampled_pos, sampled_neg = subsample_labels(
        key, match_labels, batch_size_per_image, positive_fraction
    )
    labels = jnp.where(sampled_pos, 1, jnp.where(sampled_neg, 0, -1)).astype(jnp.int32)

    if gt_boxes.shape[0] == 0:
        return labels, jnp.zeros_like(anchors)
    # Elsewhere encode the anchor onto itself: exactly zero deltas, and no log(0) from the
    # all-zero boxes of padded ground truth.
    target_boxes = jnp.where(sampled_pos[:, None], gt_boxes[matches], anchors)
    box_targets = RPN_BOX_CODER.encode(target_boxes, anchors)
    box_targets = jnp.where(sampled_pos[:, None], box_targets, 0.0)
    return labels, box_targets
