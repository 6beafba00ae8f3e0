"""The instance-segmentation record format read by the pipeline and the COCO ground truth.

A record (one image, as returned by a TFDS data source's `__getitem__`) is a dict:

    image     uint8 [H, W, 3] RGB
    image_id  int
    objects   dict with, per instance (lists of arrays, or stacked arrays):
      box     [4] float xyxy pixel-edge coordinates (width = x2 - x1)
      label   int class 1..K
      mask    [H, W] or [H, W, 1] full-image mask, nonzero = foreground
        or
      rle     str, compressed COCO RLE counts of an [H, W] mask (`msrcnn.data.builders.instances`)
      is_crowd  bool, optional (default False): a crowd region, not a training target

TFDS decodes a `Sequence` feature without TensorFlow into Python lists of per-instance
arrays (empty lists when there are no instances); `decode_record` stacks them with static
trailing shapes so images without objects need no special case downstream.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from pycocotools import mask as mask_utils


@dataclasses.dataclass(frozen=True)
class Instances:
    """One decoded image with its N instances.

    Attributes:
      image: uint8 [H, W, 3].
      image_id: int.
      boxes: float32 [N, 4] xyxy.
      labels: int32 [N] classes 1..K.
      masks: bool [N, H, W].
      is_crowd: bool [N]; crowd regions count for evaluation only.
    """

    image: np.ndarray
    image_id: int
    boxes: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    is_crowd: np.ndarray | None = None

    def __post_init__(self):
        if self.is_crowd is None:
            object.__setattr__(self, "is_crowd", np.zeros(len(self.labels), bool))

    def without_crowd(self) -> Instances:
        """The training view: crowd regions removed (detectron2 drops them from targets)."""
        keep = ~self.is_crowd
        if keep.all():
            return self
        return Instances(
            self.image,
            self.image_id,
            self.boxes[keep],
            self.labels[keep],
            self.masks[keep],
            self.is_crowd[keep],
        )


def decode_record(record: dict) -> Instances:
    """Normalises a record (see the module docstring) to `Instances` arrays."""
    image = np.asarray(record["image"], np.uint8)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
    h, w = image.shape[:2]
    objects = record["objects"]
    num = len(objects["label"])
    boxes = np.asarray(objects["box"], np.float32).reshape(num, 4)
    labels = np.asarray(objects["label"], np.int32).reshape(num)
    if not num:
        masks = np.zeros((0, h, w), bool)
    elif "rle" in objects:
        rles = [{"size": [h, w], "counts": _as_bytes(c)} for c in objects["rle"]]
        masks = mask_utils.decode(rles).transpose(2, 0, 1) != 0
    else:
        masks = np.stack([np.asarray(m).reshape(h, w) != 0 for m in objects["mask"]])
    crowd = objects.get("is_crowd")
    is_crowd = np.asarray(crowd, bool).reshape(num) if crowd is not None else None
    return Instances(image, int(record["image_id"]), boxes, labels, masks, is_crowd)


def _as_bytes(counts) -> bytes:
    if isinstance(counts, np.ndarray):
        counts = counts.item()
    return counts.encode() if isinstance(counts, str) else bytes(counts)
