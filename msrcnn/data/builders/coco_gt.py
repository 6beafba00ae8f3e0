"""COCO-format ground truth of a split, for scoring with pycocotools' COCOeval.

    gt = coco_ground_truth(builder, "validation")      # or a data source / list of records
    coco = pycocotools.coco.COCO()
    coco.dataset = gt
    coco.createIndex()

Image ids are the records' `image_id`; annotation ids run 1, 2, ... (COCOeval treats id 0 as
"unmatched", so 0 must not be an annotation id); every annotation has the record's is_crowd
(0 when the record has none) as iscrowd, its mask as compressed RLE (`counts` as str, so the
dict is JSON-serialisable), `area` = the record's own area when it has one (COCO's annotation
area, which COCOeval's size ranges use), else the mask pixel count (COCO's convention for
segmentation), and `bbox` = [x, y, w, h] of the record's xyxy box.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_utils

from msrcnn.data.builders.records import decode_record


def _class_names(source) -> list[str] | None:
    """Class names from a TFDS builder's or data source's metadata, if it has them."""
    info = getattr(source, "info", None)
    if info is None:
        info = getattr(source, "dataset_info", None)
    metadata = getattr(info, "metadata", None)
    names = None if metadata is None else metadata.get("class_names")
    return list(names) if names is not None else None


def coco_ground_truth(
    source,
    split: str | None = None,
    *,
    class_names: Sequence[str] | None = None,
    category_ids: Sequence[int] | None = None,
) -> dict:
    """COCO ground-truth dict of one split.

    Args:
      source: a TFDS builder (then `split` is required), or a random-access data source /
        sequence of records in the `msrcnn.data.builders.records` format (e.g.
        `builder.as_data_source("validation")`).
      split: split name when `source` is a builder.
      class_names: names of classes 1..K; defaults to `metadata["class_names"]` of the
        builder / data source.
      category_ids: the dataset's category id of classes 1..K (default 1..K).

    Returns:
      dict with "images" ({id, height, width, file_name}), "annotations" ({id, image_id,
      category_id, segmentation (RLE), area, bbox, iscrowd}) and "categories" ({id, name}),
      usable as `COCO().dataset`. Crowd regions keep iscrowd = 1.
    """
    if hasattr(source, "as_data_source"):
        if split is None:
            raise ValueError("coco_ground_truth(builder, split): the split is required")
        names = class_names or _class_names(source)
        source = source.as_data_source(split)
    else:
        names = class_names or _class_names(source)
    if names is None:
        raise ValueError("no class names in the source's metadata: pass class_names=")
    ids = list(category_ids) if category_ids else list(range(1, len(names) + 1))
    if len(ids) != len(names):
        raise ValueError(f"{len(names)} class names but {len(ids)} category ids")

    images, annotations = [], []
    for i in range(len(source)):
        record = source[i]
        inst = decode_record(record)
        h, w = inst.image.shape[:2]
        file_name = record.get("file_name", f"{inst.image_id}.png")
        if isinstance(file_name, bytes):
            file_name = file_name.decode()
        images.append({"id": inst.image_id, "height": h, "width": w, "file_name": str(file_name)})
        if not len(inst.labels):
            continue
        # pycocotools encodes Fortran-ordered uint8 [H, W, N].
        rles = mask_utils.encode(np.asfortranarray(inst.masks.transpose(1, 2, 0), np.uint8))
        areas = mask_utils.area(rles)
        if "area" in record["objects"]:  # the dataset's own areas (COCO's), as COCOeval uses
            areas = np.asarray(record["objects"]["area"], np.float64).reshape(len(areas))
        per_object = zip(rles, areas, inst.boxes, inst.labels, inst.is_crowd, strict=True)
        for rle, area, box, label, crowd in per_object:
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": inst.image_id,
                    "category_id": ids[int(label) - 1],
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                    "area": float(area),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "iscrowd": int(crowd),
                }
            )
    categories = [{"id": i, "name": n} for i, n in zip(ids, names, strict=True)]
    return {"images": images, "annotations": annotations, "categories": categories}
