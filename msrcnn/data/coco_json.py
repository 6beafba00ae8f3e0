"""COCO-format instance annotations (a `instances_*.json` and its image folder) -> annotations.

    categories, images = read_coco_json("annotations/instances_val2017.json", "val2017", policy)

Categories are numbered 1..K in increasing category id (detectron2's contiguous mapping, which
for COCO's 80 classes skips the unused ids); `categories` keeps (category id, name) per label
so evaluation can write results with the dataset's own ids. Image ids are the json's.

Checked here (each a `BadInputPolicy` problem naming the file and the annotation id): json that
does not parse or lacks "images" / "annotations" / "categories", annotations whose image_id or
category_id is unknown, images without file_name / id, annotations without a segmentation
(Mask R-CNN needs a mask for every object).
"""

from __future__ import annotations

import json
import os

import numpy as np

from msrcnn.data.annotations import ImageAnnotation, ObjectAnnotation
from msrcnn.data.bad_input import BadInputError, BadInputPolicy


def load_json(path: str | os.PathLike, what: str) -> object:
    """json.load with errors that name the file and say what it should be."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise BadInputError(f"{what} {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInputError(f"{what} {path} is not valid JSON: {e}") from None


def read_coco_json(
    json_path: str | os.PathLike,
    image_dir: str | os.PathLike,
    policy: BadInputPolicy,
    class_names: list[str] | None = None,
) -> tuple[list[tuple[int, str]], list[ImageAnnotation]]:
    """Reads a COCO instances json.

    Args:
      json_path: the annotation file.
      image_dir: folder holding the images' `file_name`s.
      policy: where problems go.
      class_names: if given, the categories to train, by name, in this label order; other
        categories' annotations are left out (counted). Default: all, by increasing id.

    Returns:
      ([(category_id, name) for labels 1..K], [ImageAnnotation per image, in json order]).
    """
    json_path = os.fspath(json_path)
    data = load_json(json_path, "COCO annotation file")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if not isinstance(data, dict) or missing:
        raise BadInputError(
            f"{json_path} is not a COCO instances file: missing {missing or 'a top-level object'}"
        )
    try:
        by_id = {int(c["id"]): str(c["name"]) for c in data["categories"]}
    except (KeyError, TypeError, ValueError) as e:
        raise BadInputError(f"{json_path}: every category needs an id and a name ({e})") from None
    if class_names:
        by_name = {name: cid for cid, name in by_id.items()}
        unknown = [n for n in class_names if n not in by_name]
        if unknown:
            raise BadInputError(
                f"class names {unknown} are not categories of {json_path}; it has {sorted(by_name)}"
            )
        categories = [(by_name[n], n) for n in class_names]
    else:
        categories = sorted(by_id.items())
    label_of = {cid: k + 1 for k, (cid, _) in enumerate(categories)}

    images: dict[int, ImageAnnotation] = {}
    for entry in data["images"]:
        try:
            image_id, file_name = int(entry["id"]), str(entry["file_name"])
        except (KeyError, TypeError, ValueError):
            policy.problem("malformed image entry", f"{json_path}: image entry {entry!r:.200}")
            continue
        hw = None
        if "height" in entry and "width" in entry:
            hw = (int(entry["height"]), int(entry["width"]))
        images[image_id] = ImageAnnotation(
            image_id, os.path.join(os.fspath(image_dir), file_name), hw, [], json_path
        )

    for ann in data["annotations"]:
        ann_id = ann.get("id", "?") if isinstance(ann, dict) else "?"
        where = f"annotation {ann_id} in {json_path}"
        try:
            image_id, category_id = int(ann["image_id"]), int(ann["category_id"])
        except (KeyError, TypeError, ValueError):
            policy.problem(
                "malformed annotation", f"{where} needs integer image_id and category_id"
            )
            continue
        if image_id not in images:
            policy.problem(
                "annotation of an unknown image",
                f"{where} has image_id {image_id}, which is not in 'images'",
            )
            continue
        if category_id not in by_id:
            policy.problem(
                "unknown category id",
                f"{where} has category_id {category_id}, not one of the ids in 'categories' "
                f"({sorted(by_id)}); fix the id or add the category",
            )
            continue
        if category_id not in label_of:
            policy.note("annotation of a category not in class_names left out", where)
            continue
        segmentation = ann.get("segmentation")
        if segmentation is None or segmentation == []:
            policy.problem(
                "annotation without segmentation",
                f"{where} has no segmentation; Mask R-CNN needs a mask for every object",
            )
            continue
        box = None
        if "bbox" in ann:
            try:
                x, y, w, h = (float(v) for v in ann["bbox"])
            except (TypeError, ValueError):
                policy.problem(
                    "malformed box", f"{where}: bbox {ann['bbox']!r} is not [x, y, w, h]"
                )
                continue
            box = np.array([x, y, x + w, y + h], np.float64)
        images[image_id].objects.append(
            ObjectAnnotation(
                ann_id=ann_id,
                label=label_of[category_id],
                segmentation=segmentation,
                box=box,
                is_crowd=bool(ann.get("iscrowd", 0)),
                area=float(ann["area"]) if isinstance(ann.get("area"), (int, float)) else None,
            )
        )
    return categories, list(images.values())
