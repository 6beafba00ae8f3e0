"""RoI-head training targets, per image: proposal sampling, class / box / mask / MaskIoU targets.

Proposal sampling follows torchvision's `RoIHeads.select_training_samples` (and detectron2's
`label_and_sample_proposals`): the ground-truth boxes are appended to the proposals
(`add_gt_proposals`), every candidate is matched to the ground truth of highest IoU
(IoU >= 0.5 foreground, below background, no low-quality matches), and 512 are sampled at
most 25% foreground. Padded proposals and padded ground truth never become candidates.

Mask targets come from the ground-truth masks as the data layer ships them: each instance's
mask cropped to its own box and resized to S x S (`gt_masks [M, S, S]`, see `msrcnn.data`).
Each RoI's 28 x 28 target is that crop resampled into the RoI (RoIAlign semantics with
`aligned=True`, in the crop's frame, the crop extended by zeros outside the ground-truth box),
instead of RoIAlign over a full-image mask as torchvision / detectron2 do. The MaskIoU ratio
(the fraction of the object inside the RoI) is computed from the same crop.

Layout of a sample: `sample_indices` puts the sampled positives first, so every positive lies
in the first `max_positives(num_samples, positive_fraction)` slots (128 of 512). The mask and
MaskIoU branches run on those slots only: `rois[:P]`, `matched_gt[:P]`, `is_positive[:P]`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from msrcnn.ops.boxes import ROI_BOX_CODER, pairwise_iou
from msrcnn.ops.sampling import sample_indices
from msrcnn.ops.select import select_class
from msrcnn.targets.matcher import Matcher

__all__ = [
    "RoiSample",
    "mask_targets",
    "maskiou_targets",
    "max_positives",
    "sample_rois",
    "select_class_masks",
]


# Floor of the MaskIoU ratio, as the official code's `max(ratio, 1e-10)`.
_RATIO_EPS = 1e-10
_HIGHEST = jax.lax.Precision.HIGHEST


def max_positives(num_samples: int, positive_fraction: float) -> int:
    """Number of leading slots of a `RoiSample` that can hold positives (static int).

    `int(512 * 0.25) = 128`, the truncation of torchvision / detectron2 and `sample_indices`.
    """
    return int(num_samples * positive_fraction)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=[
        "rois",
        "classes",
        "matched_gt",
        "valid",
        "is_positive",
        "box_targets",
        "iou",
        "source_index",
    ],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class RoiSample:
    """The sampled RoIs of one image (or a batch of them, with a leading B axis under vmap).

    Slots are ordered positives first, then negatives, then padding; all positives lie in the
    first `max_positives(num_samples, positive_fraction)` slots.

    Attributes:
      rois: [R, 4] float32 xyxy boxes (proposals or ground-truth boxes); zeros in padding.
        No gradient.
      classes: [R] int32 class of the matched ground truth for positives (1..K), 0 for
        background and padding.
      matched_gt: [R] int32 index into the (padded) ground truth of the best match; meaningful
        for positives only (0 for padding).
      valid: [R] bool, True for sampled RoIs (positives and negatives), False for padding.
      is_positive: [R] bool, True for sampled positives.
      box_targets: [R, 4] float32 deltas (weights 10, 10, 5, 5) of the matched ground truth
        relative to the RoI for positives; zeros elsewhere.
      iou: [R] float32 IoU with the matched ground truth (0 for padding).
      source_index: [R] int32 candidate index: p < P for proposal p, P + m for ground truth m.
    """

    rois: jax.Array
    classes: jax.Array
    matched_gt: jax.Array
    valid: jax.Array
    is_positive: jax.Array
    box_targets: jax.Array
    iou: jax.Array
    source_index: jax.Array

    def __getitem__(self, name: str) -> jax.Array:
        """Dict-style access, `sample["rois"]`, for code written against a dict of arrays."""
        return getattr(self, name)


def sample_rois(
    key,
    proposals,
    proposal_valid,
    gt_boxes,
    gt_classes,
    gt_valid,
    num_samples: int = 512,
    positive_fraction: float = 0.25,
    fg_iou_threshold: float = 0.5,
    bg_iou_threshold: float | None = None,
) -> RoiSample:
    """Samples the training RoIs of one image and their class and box targets.

    Args:
      key: PRNG key of this image (for the sampling).
      proposals: [P, 4] xyxy proposals (padded); treated as constants (no gradient).
      proposal_valid: [P] bool, False for padding.
      gt_boxes: [M, 4] xyxy ground-truth boxes (padded).
      gt_classes: [M] int classes 1..K.
      gt_valid: [M] bool, False for padding.
      num_samples: static R, RoIs sampled per image.
      positive_fraction: static largest fraction of positives.
      fg_iou_threshold: static; IoU >= this is foreground.
      bg_iou_threshold: static; IoU < this is background, in between ignored. None (default,
        torchvision and detectron2) means equal to `fg_iou_threshold`: nothing is ignored.

    Returns:
      A `RoiSample` with R = num_samples slots. The ground-truth boxes are candidates too
      (torchvision's `add_gt_proposals`): each valid one matches itself with IoU 1. With no
      valid ground truth every valid proposal is background.
    """
    proposals = jax.lax.stop_gradient(jnp.asarray(proposals, jnp.float32))
    gt_boxes = jax.lax.stop_gradient(jnp.asarray(gt_boxes, jnp.float32))
    gt_classes = jnp.asarray(gt_classes, jnp.int32)
    gt_valid = jnp.asarray(gt_valid, bool)
    num_gt = gt_boxes.shape[0]

    candidates = jnp.concatenate([proposals, gt_boxes], axis=0)  # [P + M, 4]
    candidate_valid = jnp.concatenate([jnp.asarray(proposal_valid, bool), gt_valid], axis=0)

    if bg_iou_threshold is None or bg_iou_threshold >= fg_iou_threshold:
        matcher = Matcher((fg_iou_threshold,), (0, 1))
    else:
        matcher = Matcher((bg_iou_threshold, fg_iou_threshold), (0, -1, 1))
    iou = pairwise_iou(gt_boxes, candidates)  # [M, P + M]
    matches, labels = matcher(iou, gt_valid)
    labels = jnp.where(candidate_valid, labels, -1)  # padding is never sampled

    indices, is_positive, valid = sample_indices(key, labels, num_samples, positive_fraction)
    is_positive = is_positive & valid
    rois = jnp.where(valid[:, None], candidates[indices], 0.0)
    matched_gt = jnp.where(valid, matches[indices], 0)

    if num_gt == 0:
        zeros = jnp.zeros((num_samples,), jnp.float32)
        return RoiSample(
            rois=rois,
            classes=jnp.zeros((num_samples,), jnp.int32),
            matched_gt=matched_gt,
            valid=valid,
            is_positive=is_positive,
            box_targets=jnp.zeros((num_samples, 4), jnp.float32),
            iou=zeros,
            source_index=jnp.where(valid, indices, 0),
        )

    classes = jnp.where(is_positive, gt_classes[matched_gt], 0)
    # Non-positives encode the RoI onto itself: exact zeros, and no log(0) from padding.
    target_boxes = jnp.where(is_positive[:, None], gt_boxes[matched_gt], rois)
    box_targets = jnp.where(is_positive[:, None], ROI_BOX_CODER.encode(target_boxes, rois), 0.0)
    best_iou = jnp.max(jnp.where(gt_valid[:, None], iou, 0.0), axis=0)  # [P + M]
    return RoiSample(
        rois=rois,
        classes=classes.astype(jnp.int32),
        matched_gt=matched_gt.astype(jnp.int32),
        valid=valid,
        is_positive=is_positive,
        box_targets=box_targets,
        iou=jnp.where(valid, best_iou[indices], 0.0),
        source_index=jnp.where(valid, indices, 0).astype(jnp.int32),
    )


def select_class_masks(mask_logits, classes):
    """The mask of each RoI's class: [..., R, H, W, K], [..., R] (1..K) -> [..., R, H, W].

    Class c reads channel c - 1 (the mask head has no background channel); class 0
    (background / padding) reads channel 0, which callers mask out.
    """
    return select_class(mask_logits, jnp.asarray(classes, jnp.int32) - 1)


def _crop_frame(lo, hi, gt_lo, scale):
    """RoI edges along one axis in the crop's frame, where the crop spans [0, S]."""
    return (lo - gt_lo) * scale, (hi - gt_lo) * scale


def _bilinear_axis_weights(start, end, crop_size: int, out_size: int, sampling_ratio: int):
    """Dense RoIAlign (aligned=True) weights along one axis of a zero-extended crop.

    Output bin i of a RoI spanning [start, end] (crop frame, pixel centres at k + 0.5) averages
    `sampling_ratio` bilinear samples; the taps outside 0..S-1 read zeros. The weight matrix
    makes the 2-D resampling two small matmuls: out = Wy @ crop @ Wx^T.

    Args:
      start, end: [R] float32 RoI edges in the crop frame.
      crop_size: static S.
      out_size: static number of output bins (28).
      sampling_ratio: static samples per bin.

    Returns:
      [R, out_size, S] float32.
    """
    bin_size = (end - start) / out_size
    bins = jnp.arange(out_size, dtype=jnp.float32)[None, :, None]
    frac = (jnp.arange(sampling_ratio, dtype=jnp.float32)[None, None, :] + 0.5) / sampling_ratio
    pos = start[:, None, None] + (bins + frac) * bin_size[:, None, None]  # [R, out, grid]
    # aligned=True: the continuous coordinate of pixel centre k is k + 0.5.
    u = pos - 0.5
    low = jnp.floor(u)
    w_high = u - low
    # Float comparisons against the pixel indices: taps outside 0..S-1 match nothing (zero
    # extension) and huge coordinates never overflow an integer cast.
    k = jnp.arange(crop_size, dtype=jnp.float32)
    low_tap = (low[..., None] == k) * (1.0 - w_high)[..., None]  # [R, out, grid, S]
    high_tap = (low[..., None] + 1.0 == k) * w_high[..., None]
    return jnp.sum(low_tap + high_tap, axis=2) / sampling_ratio  # [R, out, S]


def _cell_overlap(start, end, crop_size: int):
    """Length of [start, end] inside each crop cell [k, k + 1], k = 0..S-1: [R] -> [R, S]."""
    k = jnp.arange(crop_size, dtype=jnp.float32)[None, :]
    overlap = jnp.minimum(end[:, None], k + 1.0) - jnp.maximum(start[:, None], k)
    return jnp.clip(overlap, 0.0, 1.0)


def _mask_as_float(gt_masks):
    """uint8 0..255 -> [0, 1]; bool -> {0, 1}; floats unchanged."""
    gt_masks = jnp.asarray(gt_masks)
    if gt_masks.dtype == jnp.uint8:
        return gt_masks.astype(jnp.float32) / 255.0
    return gt_masks.astype(jnp.float32)


def mask_targets(gt_masks, gt_boxes, rois, matched_gt, size: int = 28, sampling_ratio: int = 2):
    """Mask-head targets and MaskIoU ratios of RoIs, from box-cropped ground-truth masks.

    The crop of ground truth m is an S x S image covering exactly its box: crop pixel (i, j)
    is the cell [x1 + j * w / S, x1 + (j + 1) * w / S] x [y1 + i * h / S, ...]. Each RoI is
    mapped into that frame and resampled with RoIAlign semantics (aligned=True, `sampling_ratio`
    bilinear samples per bin and axis), reading zeros outside the crop: the mask is empty
    outside its own box. This equals `msrcnn.ops.roi_align(aligned=True)` (torchvision's
    kernel) over the crop zero-padded by a pixel (tested), and approximates detectron2's
    targets (RoIAlign of the full-image mask; torchvision's use aligned=False): the crop is
    already a resampling of the mask at S x S, so edges are softened by about one crop pixel
    (box size / S). detectron2 also uses an adaptive number of samples per bin (ceil of the bin
    size in image pixels), which has no static shape. Here it is fixed: with S = 112 and
    `sampling_ratio=2`, a RoI the size of its ground truth has 4 crop pixels per bin and the
    2 samples weigh all 4 equally (a box filter); a RoI k times larger sees 4k crop pixels per
    bin through the same 2 samples, as any fixed-ratio RoIAlign does.

    MaskIoU ratio = (area of the ground-truth mask inside the RoI) / (area of the whole mask),
    both integrated over the crop taken as piecewise constant on its cells (a cell partly inside
    the RoI counts with the fraction of its area inside). The official code computes both areas
    exactly from the polygons; here the approximation is the crop's resolution: the mask is
    known at S x S over its box (S = 112: cells of box size / 112), and anything outside the
    box is taken as empty. The ratio is 0 for an empty mask or a degenerate ground-truth box.

    Args:
      gt_masks: [M, S, S] uint8 (0..255, as the data layer ships them), bool or float in [0, 1].
      gt_boxes: [M, 4] xyxy boxes the masks were cropped to.
      rois: [R, 4] xyxy RoIs (typically the positive slots `rois[:P]` of a `RoiSample`).
      matched_gt: [R] int index of each RoI's ground truth.
      size: static output side (28).
      sampling_ratio: static bilinear samples per output bin along each axis.

    Returns:
      targets: [R, size, size] float32 in [0, 1] (soft; threshold at 0.5 for binary targets).
      ratio: [R] float32 in [0, 1].
      Both carry no gradient. RoIs matched to a degenerate (e.g. padded) box give zeros.
    """
    masks = _mask_as_float(gt_masks)
    crop_size = masks.shape[-1]
    gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
    rois = jax.lax.stop_gradient(jnp.asarray(rois, jnp.float32))
    matched_gt = jnp.asarray(matched_gt, jnp.int32)
    if masks.shape[0] == 0:
        num_rois = rois.shape[0]
        return jnp.zeros((num_rois, size, size), jnp.float32), jnp.zeros((num_rois,))

    crops = masks[matched_gt]  # [R, S, S]
    box = gt_boxes[matched_gt]  # [R, 4]
    gt_w, gt_h = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    ok = (gt_w > 0) & (gt_h > 0)
    # Crop cells per image pixel; 0 for degenerate boxes keeps everything finite.
    scale_x = jnp.where(ok, crop_size / jnp.where(ok, gt_w, 1.0), 0.0)
    scale_y = jnp.where(ok, crop_size / jnp.where(ok, gt_h, 1.0), 0.0)
    x1, x2 = _crop_frame(rois[:, 0], rois[:, 2], box[:, 0], scale_x)
    y1, y2 = _crop_frame(rois[:, 1], rois[:, 3], box[:, 1], scale_y)

    wx = _bilinear_axis_weights(x1, x2, crop_size, size, sampling_ratio)  # [R, size, S]
    wy = _bilinear_axis_weights(y1, y2, crop_size, size, sampling_ratio)  # [R, size, S]
    rows = jnp.einsum("rkl,rjl->rkj", crops, wx, precision=_HIGHEST)  # [R, S, size]
    targets = jnp.einsum("rik,rkj->rij", wy, rows, precision=_HIGHEST)  # [R, size, size]
    targets = jnp.where(ok[:, None, None], jnp.clip(targets, 0.0, 1.0), 0.0)

    fx = _cell_overlap(x1, x2, crop_size)  # [R, S]
    fy = _cell_overlap(y1, y2, crop_size)  # [R, S]
    inside = jnp.einsum("ri,rij,rj->r", fy, crops, fx, precision=_HIGHEST)
    whole = jnp.sum(crops, axis=(1, 2))
    has_area = ok & (whole > 0)
    ratio = jnp.where(has_area, inside / jnp.where(has_area, whole, 1.0), 0.0)
    ratio = jnp.clip(ratio, 0.0, 1.0)
    return jax.lax.stop_gradient(targets), jax.lax.stop_gradient(ratio)


def maskiou_targets(mask_logits_target, mask_targets, ratio, pred_threshold: float = 0.0):
    """MaskIoU regression targets: IoU of the binarised predicted mask with the whole object.

    DESIGN.md's definition (the official Mask Scoring R-CNN target): on the 28 x 28 grid,
    pred = logit > pred_threshold, target = mask_target >= 0.5, I = |pred and target|; the whole
    object's area in grid units is full = |target| / max(ratio, 1e-10) (the RoI sees only the
    fraction `ratio` of it); IoU = I / max(|pred| + full - I, 1). The official code thresholds
    the logits at 0.5 (`pred_masks > 0.5` on logits); DESIGN.md chose logit > 0 (probability >
    0.5): pass `pred_threshold=0.5` for the official behaviour.

    Args:
      mask_logits_target: [..., R, H, W] mask logits of each RoI's target class.
      mask_targets: [..., R, H, W] mask targets in [0, 1] (from `mask_targets`).
      ratio: [..., R] fraction of each object inside its RoI (from `mask_targets`).
      pred_threshold: static logit threshold of the predicted mask.

    Returns:
      [..., R] float32 IoU in [0, 1], without gradient.
    """
    pred = jnp.asarray(mask_logits_target, jnp.float32) > pred_threshold
    target = jnp.asarray(mask_targets, jnp.float32) >= 0.5
    intersection = jnp.sum(pred & target, axis=(-2, -1), dtype=jnp.float32)
    pred_area = jnp.sum(pred, axis=(-2, -1), dtype=jnp.float32)
    full_area = jnp.sum(target, axis=(-2, -1), dtype=jnp.float32) / jnp.maximum(
        jnp.asarray(ratio, jnp.float32), _RATIO_EPS
    )
    union = jnp.maximum(pred_area + full_area - intersection, 1.0)
    return jax.lax.stop_gradient(intersection / union)
