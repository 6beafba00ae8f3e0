"""Annotations read from any source format, before they become dataset records.

Readers (`coco_json`, `via_json`, `png_masks`) turn their files into `ImageAnnotation`s;
`to_record_objects` then applies the same hygiene to all of them and produces the per-object
fields the instance builders store:

  * segmentations of every kind (COCO polygons, uncompressed RLE with list counts as in crowd
    annotations, compressed RLE, full-image bitmaps) become compressed RLE via pycocotools;
    polygons with fewer than 3 points are dropped (an object left with none is dropped);
  * boxes (xyxy, pixel-edge coordinates) come from the annotation or, when it has none, from
    the mask; they are clipped to the image; objects whose clipped box is under 1 pixel wide
    or high, or whose mask is empty, are dropped;
  * crowd regions are kept with is_crowd set: the training pipeline leaves them out of the
    targets, evaluation gives them to COCOeval as crowds.

Every drop and clip is counted by the `BadInputPolicy` (and appears in the build summary).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from msrcnn.data.sources.bad_input import BadInputPolicy

# Boxes narrower or lower than this (pixels, after clipping) cannot be trained on.
MIN_BOX_SIDE = 1.0


@dataclasses.dataclass(frozen=True)
class MaskFile:
    """A per-instance mask image (nonzero = object); resized (nearest) to its image if the
    sizes differ, as Open Images' masks are."""

    path: str


@dataclasses.dataclass
class ObjectAnnotation:
    """One annotated object as the source gives it.

    Attributes:
      ann_id: the source's id of the annotation (COCO id, region index, CSV row), for messages.
      label: contiguous class 1..K.
      segmentation: COCO polygons (list of flat [x0, y0, x1, y1, ...] lists), an RLE dict
        ({"size": [h, w], "counts": str | bytes | list[int]}), a bool [H, W] bitmap, or a
        `MaskFile`.
      box: xyxy pixel-edge box from the source, or None to take the mask's.
      is_crowd: a COCO crowd region.
      box_is_relative: the box is in fractions of the image size (Open Images).
      area: the source's area (COCO's `area`, what COCOeval's size ranges use); None = the
        mask's pixel count.
    """

    ann_id: int | str
    label: int
    segmentation: Any
    box: np.ndarray | None = None
    is_crowd: bool = False
    box_is_relative: bool = False
    area: float | None = None


@dataclasses.dataclass
class ImageAnnotation:
    """One image and its objects.

    Attributes:
      image_id: integer id written to records and COCO results (the dataset's own id).
      path: image file.
      hw: (height, width) the annotation states, checked against the file; None if unknown.
      objects: its objects.
      source: the annotation file, for messages.
    """

    image_id: int
    path: str
    hw: tuple[int, int] | None
    objects: list[ObjectAnnotation]
    source: str = ""


def _where(image: ImageAnnotation, obj: ObjectAnnotation) -> str:
    return f"annotation {obj.ann_id} of image {image.image_id} ({image.path}) in {image.source}"


def _read_mask_file(path: str, hw: tuple[int, int], where: str, policy) -> np.ndarray | None:
    try:
        with Image.open(path) as mask:
            mask.load()
            if (mask.height, mask.width) != tuple(hw):
                policy.note(
                    "mask image resized (nearest) to its image",
                    f"{where}: {path} is {mask.height}x{mask.width}, image {hw[0]}x{hw[1]}",
                )
                mask = mask.resize((hw[1], hw[0]), Image.NEAREST)
            array = np.asarray(mask)
    except (OSError, SyntaxError, ValueError) as e:
        policy.problem("missing or corrupt mask file", f"{where}: cannot read mask {path}: {e}")
        return None
    if array.ndim == 3:
        array = array[..., :3].max(axis=-1) if array.shape[-1] >= 3 else array[..., 0]
    return array != 0


def segmentation_to_rle(
    segmentation, hw: tuple[int, int], image: ImageAnnotation, obj: ObjectAnnotation, policy
) -> dict | None:
    """Any supported segmentation -> compressed RLE dict for an image of size `hw`.

    Returns None (after telling the policy) when nothing usable remains.
    """
    h, w = hw
    where = _where(image, obj)
    if isinstance(segmentation, MaskFile):
        segmentation = _read_mask_file(segmentation.path, hw, where, policy)
        if segmentation is None:
            return None
    if isinstance(segmentation, np.ndarray):
        if segmentation.shape != (h, w):
            policy.problem(
                "mask size differs from the image",
                f"{where}: mask is {segmentation.shape}, image is {(h, w)}",
            )
            return None
        return mask_utils.encode(np.asfortranarray(segmentation.astype(np.uint8)))
    if isinstance(segmentation, dict):
        size = segmentation.get("size")
        counts = segmentation.get("counts")
        if size is None or counts is None:
            policy.problem(
                "malformed RLE", f"{where}: an RLE needs 'size' and 'counts', got {segmentation}"
            )
            return None
        if list(size) != [h, w]:
            policy.problem(
                "mask size differs from the image",
                f"{where}: RLE size {list(size)} but the image is {[h, w]}",
            )
            return None
        if isinstance(counts, list):  # uncompressed RLE (COCO crowd annotations)
            return mask_utils.frPyObjects(segmentation, h, w)
        return {"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}
    if isinstance(segmentation, list) and all(isinstance(p, list) for p in segmentation):
        polygons = []
        for polygon in segmentation:
            coords = np.asarray(polygon, np.float64).reshape(-1)
            if coords.size < 6 or coords.size % 2 or not np.isfinite(coords).all():
                policy.note(
                    "polygon with fewer than 3 points (or odd / non-finite coordinates) dropped",
                    f"{where}: {len(coords)} coordinates",
                )
                continue
            polygons.append(coords.tolist())
        if not polygons:
            return None
        return mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))
    policy.problem(
        "malformed segmentation",
        f"{where}: segmentation {str(segmentation)[:80]} is none of: a list of polygons "
        "([[x0, y0, x1, y1, ...], ...]), an RLE dict, a bitmap",
    )
    return None


def to_record_objects(
    image: ImageAnnotation, hw: tuple[int, int], policy: BadInputPolicy
) -> dict[str, list]:
    """The objects of one image as builder fields (lists, one entry per kept object).

    Returns:
      {"box": float32 [4] xyxy, "label": int, "is_crowd": bool, "area": float (the source's
       area if it has one, else mask pixels),
       "rle": str (compressed RLE counts; size is the image's), "ann_id": str}
    """
    h, w = hw
    out = {"box": [], "label": [], "is_crowd": [], "area": [], "rle": [], "ann_id": []}
    for obj in image.objects:
        where = _where(image, obj)
        rle = segmentation_to_rle(obj.segmentation, hw, image, obj, policy)
        if rle is None:
            policy.note("object without a usable segmentation dropped", where)
            continue
        area = float(mask_utils.area(rle))
        if area <= 0:
            policy.note("object with an empty mask dropped", where)
            continue
        if obj.box is None:
            x, y, bw, bh = mask_utils.toBbox(rle)
            box = np.array([x, y, x + bw, y + bh], np.float64)
        else:
            box = np.asarray(obj.box, np.float64)
            if box.shape != (4,) or not np.isfinite(box).all():
                policy.problem("malformed box", f"{where}: box {obj.box} is not 4 finite numbers")
                continue
            if obj.box_is_relative:
                box = box * np.array([w, h, w, h], np.float64)
        clipped = np.clip(box, 0.0, [w, h, w, h])
        if not np.array_equal(clipped, box):
            policy.note("box clipped to the image", f"{where}: {box.tolist()} in {w}x{h}")
        if min(clipped[2] - clipped[0], clipped[3] - clipped[1]) < MIN_BOX_SIDE:
            policy.note(
                f"object with a box under {MIN_BOX_SIDE:g} px (after clipping) dropped",
                f"{where}: {box.tolist()}",
            )
            continue
        counts = rle["counts"]
        out["box"].append(clipped.astype(np.float32))
        out["label"].append(int(obj.label))
        out["is_crowd"].append(bool(obj.is_crowd))
        out["area"].append(float(obj.area) if obj.area is not None else area)
        out["rle"].append(counts.decode() if isinstance(counts, bytes) else counts)
        out["ann_id"].append(str(obj.ann_id))
    return out
