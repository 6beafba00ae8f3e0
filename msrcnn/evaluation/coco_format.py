"""Detections -> COCO results: boxes as xywh, masks as RLE, masks ranked two ways.

One inference pass yields three result lists (the keys of `coco_results`):

    "bbox"     boxes, score = class score
    "segm"     masks, score = class score               (plain Mask R-CNN ranking)
    "segm_ms"  the same masks, score = class score x MaskIoU   (mask scoring ranking)

Each result is a COCO results-format dict with plain Python types (json-serialisable):
`{"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score": float}` or
`{"image_id", "category_id", "segmentation": {"size": [H, W], "counts": str}, "score"}`.
Segm results carry no "bbox" key on purpose: pycocotools' `loadRes` then takes a result's
area from its mask rather than its box, and COCOeval uses that area to decide which
unmatched detections the small/medium/large rows ignore (detectron2 drops the key too).

`batch_to_detections` turns `msrcnn.detector.detect` outputs of an evaluation batch
(padded, input pixels, 28x28 mask probabilities) into per-image `Detections` in original
pixels with `msrcnn.predictor.outputs_to_detections`, as `Predictor.__call__` does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_util

from msrcnn.predictor import Detections, outputs_to_detections

BBOX = "bbox"
SEGM = "segm"
SEGM_MS = "segm_ms"
RESULT_KEYS = (BBOX, SEGM, SEGM_MS)


def encode_masks(masks: np.ndarray) -> list[dict]:
    """Binary masks -> compressed RLEs with str counts (json-ready).

    Args:
      masks: [N, H, W] bool (or 0/1 integer) masks.

    Returns:
      N dicts {"size": [H, W], "counts": str}, in order.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N, H, W], got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    # pycocotools encodes column-major [H, W, N] uint8 (its RLE runs down columns).
    stacked = np.asfortranarray(masks.transpose(1, 2, 0) != 0, dtype=np.uint8)
    rles = mask_util.encode(stacked)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")  # bytes are not json-serialisable
    return rles


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """[N, 4] (x1, y1, x2, y2) -> [N, 4] (x, y, width, height), COCO's box format."""
    boxes = np.asarray(boxes, np.float64)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def image_results(
    image_id: int, detections: Detections, rles: Sequence[dict] | None = None
) -> dict[str, list[dict]]:
    """COCO results of one image: {"bbox": [...], "segm": [...], "segm_ms": [...]}.

    Args:
      image_id: the dataset image id.
      detections: the image's N detections in original pixels (labels = category ids).
      rles: optional precomputed `encode_masks(detections.masks)` (e.g. shared with
        calibration, so masks are encoded once).

    Returns:
      dict of three lists of N result dicts each; the two segm lists share the RLE dicts.
    """
    if rles is None:
        rles = encode_masks(detections.masks)
    if len(rles) != len(detections):
        raise ValueError(f"{len(rles)} RLEs for {len(detections)} detections")
    image_id = int(image_id)
    xywh = xyxy_to_xywh(detections.boxes).tolist() if len(detections) else []
    # .tolist() turns numpy scalars into Python ints/floats for json.
    labels = np.asarray(detections.labels).tolist()
    scores = np.asarray(detections.scores, np.float64).tolist()
    mask_scores = np.asarray(detections.mask_scores, np.float64).tolist()
    out = {key: [] for key in RESULT_KEYS}
    for box, label, score, mask_score, rle in zip(
        xywh, labels, scores, mask_scores, rles, strict=True
    ):
        base = {"image_id": image_id, "category_id": int(label)}
        out[BBOX].append({**base, "bbox": box, "score": score})
        out[SEGM].append({**base, "segmentation": rle, "score": score})
        out[SEGM_MS].append({**base, "segmentation": rle, "score": mask_score})
    return out


def coco_results(items: Iterable[tuple[int, Detections]]) -> dict[str, list[dict]]:
    """COCO results of many images: (image_id, Detections) pairs -> the three result lists."""
    out = {key: [] for key in RESULT_KEYS}
    for image_id, detections in items:
        for key, results in image_results(image_id, detections).items():
            out[key].extend(results)
    return out


def write_results(results: Mapping[str, list[dict]], directory: str) -> dict[str, str]:
    """Writes each result list to <directory>/<key>.json; returns {key: path}."""
    os.makedirs(directory, exist_ok=True)
    paths = {}
    for key, items in results.items():
        paths[key] = os.path.join(directory, f"{key}.json")
        with open(paths[key], "w") as f:
            json.dump(items, f)
    return paths


def batch_to_detections(
    outputs: Mapping[str, np.ndarray],
    batch: Mapping[str, np.ndarray],
    category_ids: Sequence[int],
    mask_threshold: float = 0.5,
    paste_multiple: int = 128,
) -> list[tuple[int, Detections]]:
    """`detect` outputs of an evaluation batch -> [(image_id, Detections)] per real image.

    Args:
      outputs: `detect` dict of [B, D, ...] arrays (boxes, labels, scores, mask_probs,
        mask_scores, valid); jax or numpy arrays.
      batch: the evaluation batch (image_id [B], image_hw [B, 2], orig_hw [B, 2]); images
        with image_id < 0 are batch padding and are skipped.
      category_ids: K dataset category ids (class c -> category_ids[c - 1]).
      mask_threshold, paste_multiple: as in `outputs_to_detections`.

    Returns:
      list of (image_id, Detections in original pixels), in batch order.
    """
    keys = ("boxes", "labels", "scores", "mask_probs", "mask_scores", "valid")
    host = {key: np.asarray(outputs[key]) for key in keys}
    image_ids = np.asarray(batch["image_id"])
    out = []
    for b, image_id in enumerate(image_ids.tolist()):
        if image_id < 0:
            continue
        per_image = {key: value[b] for key, value in host.items()}
        detections = outputs_to_detections(
            per_image,
            np.asarray(batch["image_hw"])[b],
            np.asarray(batch["orig_hw"])[b],
            category_ids,
            mask_threshold,
            paste_multiple,
        )
        out.append((int(image_id), detections))
    return out
