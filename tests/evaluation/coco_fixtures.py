"""Tiny COCO ground truths with rectangular masks, and detections built from them."""

from __future__ import annotations

import numpy as np

from msrcnn.evaluation.coco_format import encode_masks
from msrcnn.predictor import Detections

# Non-contiguous, like COCO's 1..90 with gaps.
CATEGORY_IDS = (1, 3, 90)


def rect_mask(hw, box) -> np.ndarray:
    """[H, W] bool, True on pixels x1 <= x < x2, y1 <= y < y2 of an integer xyxy box."""
    x1, y1, x2, y2 = box
    mask = np.zeros(hw, bool)
    mask[y1:y2, x1:x2] = True
    return mask


def make_gt(images, objects, category_ids=CATEGORY_IDS, crowd=()) -> dict:
    """A COCO dataset dict.

    Args:
      images: [(image_id, height, width)].
      objects: [(image_id, category_id, (x1, y1, x2, y2) or [H, W] bool mask)]; a box
        stands for its rectangle mask.
      crowd: indices into `objects` marked iscrowd=1.
    """
    sizes = {image_id: (h, w) for image_id, h, w in images}
    annotations = []
    for index, (image_id, category_id, shape) in enumerate(objects):
        mask = np.asarray(shape) if np.ndim(shape) == 2 else rect_mask(sizes[image_id], shape)
        ys, xs = np.nonzero(mask)
        annotations.append(
            {
                "id": index + 1,
                "image_id": image_id,
                "category_id": category_id,
                "bbox": [
                    float(xs.min()),
                    float(ys.min()),
                    float(xs.max() + 1 - xs.min()),
                    float(ys.max() + 1 - ys.min()),
                ],
                "area": float(mask.sum()),
                "segmentation": encode_masks(mask[None])[0],
                "iscrowd": int(index in crowd),
            }
        )
    return {
        "images": [{"id": i, "height": h, "width": w} for i, h, w in images],
        "annotations": annotations,
        "categories": [{"id": c, "name": f"class{c}"} for c in category_ids],
    }


def detections(hw, dets) -> Detections:
    """Detections of one image from [(category_id, box xyxy, mask box or [H, W] mask, score,
    mask_score)]."""
    boxes, labels, scores, mask_scores, masks = [], [], [], [], []
    for category_id, box, shape, score, mask_score in dets:
        boxes.append(box)
        labels.append(category_id)
        scores.append(score)
        mask_scores.append(mask_score)
        masks.append(np.asarray(shape) if np.ndim(shape) == 2 else rect_mask(hw, shape))
    n = len(dets)
    return Detections(
        boxes=np.asarray(boxes, np.float32).reshape(n, 4),
        labels=np.asarray(labels, np.int64),
        scores=np.asarray(scores, np.float32),
        mask_scores=np.asarray(mask_scores, np.float32),
        masks=np.asarray(masks, bool).reshape(n, *hw),
        classes=np.asarray([CATEGORY_IDS.index(c) + 1 for c in labels], np.int64),
    )
