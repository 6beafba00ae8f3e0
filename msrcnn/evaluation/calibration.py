"""MaskIoU calibration: the MaskIoU head's prediction vs each mask's true IoU.

For every detection, the true IoU is the largest mask IoU (pycocotools.mask.iou) between
its binary mask and the ground-truth masks of the same category in the same image; 0 when
the image has none. Crowd ground truths are left out: the MaskIoU head is trained against
instance masks only, and COCO's crowd IoU (intersection over detection area) is a different
quantity. Numbers only; plots come elsewhere.

    pairs = CalibrationPairs()
    for image_id, detections in items:
        pairs.add(coco_gt, image_id, detections)
    print(pairs.summary())       # {"n", "pearson_r", "mean_abs_error", ...}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from msrcnn.evaluation.coco_format import encode_masks
from msrcnn.predictor import Detections


def predicted_maskiou(detections: Detections) -> np.ndarray:
    """[N] MaskIoU predictions, recovered as mask_score / score (Detections keeps only the
    product; scores are > 0 for kept detections, and 0 / 0 is reported as 0)."""
    scores = np.asarray(detections.scores, np.float64)
    mask_scores = np.asarray(detections.mask_scores, np.float64)
    return np.where(scores > 0, mask_scores / np.where(scores > 0, scores, 1.0), 0.0)


def true_mask_ious(
    coco_gt: COCO, image_id: int, category_ids: Sequence[int], rles: Sequence[dict]
) -> np.ndarray:
    """[N] best mask IoU of each detection against non-crowd ground truth of its category.

    Args:
      coco_gt: ground truth with the image (`coco_eval.load_ground_truth`).
      image_id: the image.
      category_ids: [N] each detection's dataset category id.
      rles: [N] the detections' masks as RLE (`coco_format.encode_masks`), at the image's
        original size.

    Returns:
      [N] float64 in [0, 1]; 0 where the image has no ground truth of that category.
    """
    category_ids = np.asarray(category_ids, np.int64)
    anns = [a for a in coco_gt.imgToAnns.get(int(image_id), []) if not a.get("iscrowd", 0)]
    out = np.zeros(len(rles), np.float64)
    if not len(rles) or not anns:
        return out
    gt_rles = [coco_gt.annToRLE(a) for a in anns]
    gt_cats = np.asarray([a["category_id"] for a in anns], np.int64)
    # [N, G] IoU of every pair; iscrowd=0 everywhere gives the plain intersection over union.
    ious = np.asarray(mask_util.iou(list(rles), gt_rles, [0] * len(gt_rles)), np.float64)
    ious = ious.reshape(len(rles), len(gt_rles))
    same = category_ids[:, None] == gt_cats[None, :]
    return np.where(same, ious, 0.0).max(axis=1)


def pearson_r(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation of two [N] arrays; None when undefined (N < 2 or a constant)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size < 2:
        return None
    dx, dy = x - x.mean(), y - y.mean()
    denom = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    # A model without a MaskIoU head predicts 1 everywhere: no correlation to speak of.
    if denom == 0:
        return None
    return float((dx * dy).sum() / denom)


@dataclasses.dataclass
class CalibrationPairs:
    """Accumulates (predicted MaskIoU, true mask IoU) over images.

    Attributes:
      predicted: list of [N_i] arrays, one per added image.
      true: list of [N_i] arrays.
      category_ids: list of [N_i] arrays.
    """

    predicted: list[np.ndarray] = dataclasses.field(default_factory=list)
    true: list[np.ndarray] = dataclasses.field(default_factory=list)
    category_ids: list[np.ndarray] = dataclasses.field(default_factory=list)

    def add(
        self,
        coco_gt: COCO,
        image_id: int,
        detections: Detections,
        rles: Sequence[dict] | None = None,
    ) -> None:
        """Adds one image's detections (rles: optional precomputed masks as RLE)."""
        if rles is None:
            rles = encode_masks(detections.masks)
        labels = np.asarray(detections.labels, np.int64)
        self.predicted.append(predicted_maskiou(detections))
        self.true.append(true_mask_ious(coco_gt, image_id, labels, rles))
        self.category_ids.append(labels)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(predicted [N], true [N], category_ids [N]) over all added detections."""

        def cat(parts, dtype):
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

        return (
            cat(self.predicted, np.float64),
            cat(self.true, np.float64),
            cat(self.category_ids, np.int64),
        )

    def summary(self) -> dict[str, float | int | None]:
        """n, pearson_r (None if undefined), mean_abs_error, mean_predicted, mean_true."""
        return calibration_summary(*self.arrays()[:2])


def calibration_summary(predicted: np.ndarray, true: np.ndarray) -> dict[str, float | int | None]:
    """Calibration numbers of [N] predicted and [N] true IoUs (means are None when N = 0).

    `pearson_r` is over all detections; `pearson_r_matched` over those with a true IoU > 0,
    i.e. with a ground truth of their class under them (the MaskIoU head is trained on
    positives only, so this is the part it can be right about).
    """
    predicted, true = np.asarray(predicted, np.float64), np.asarray(true, np.float64)
    n = int(predicted.size)

    def mean(values):
        return float(values.mean()) if n else None

    matched = true > 0  # some ground truth of the detection's class overlaps it
    return {
        "n": n,
        "pearson_r": pearson_r(predicted, true),
        "n_matched": int(matched.sum()),
        "pearson_r_matched": pearson_r(predicted[matched], true[matched]),
        "mean_abs_error": mean(np.abs(predicted - true)),
        "mean_predicted": mean(predicted),
        "mean_true": mean(true),
    }
