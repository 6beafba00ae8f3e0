"""COCO-format instance annotations (a `instances_*.json` and its image folder) -> annotations.

    categories, images = read_coco_json("annotations/instances_val2017.json", "val2017", policy)

Categories are numbered 1..K in increasing category id (detectron2's contiguous mapping, which
for COCO's 80 classes skips the unused ids); `categories` keeps (category id, name) per label
so evaluation can write results with the dataset's own ids. Image ids are the json's.

Checked here (each a `BadInputPolicy` problem naming the file and the annotation id):
annotations whose image_id or category_id is unknown, images without file_name / id,
annotations without a segmentation (Mask R-CNN needs a mask for every object), and repeats that
json order would otherwise settle silently: an image id used by more than one entry of
"images", an image file listed under more than one id (every such entry is left out when
skipping, with its annotations: nothing says which is right), an annotation id used twice
(every annotation with it left out). Errors whatever the setting: json that does not parse,
lacks "images" / "annotations" / "categories" or repeats a key within an object, and a category
id or name used twice (the categories are the model's classes).
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Callable

import numpy as np

from msrcnn.data.sources.annotations import ImageAnnotation, ObjectAnnotation
from msrcnn.data.sources.bad_input import (
    BadInputError,
    BadInputPolicy,
    check_class_names,
    report_repeats,
)


class RepeatedKeys(dict):
    """A JSON object that repeats a key. As a dict it holds the last value of each key (what
    json.load gives); `pairs` keeps every (key, value) in file order."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[str, object]]):
        super().__init__(pairs)
        self.pairs = pairs

    def repeats(self) -> dict[str, list[object]]:
        """key -> its values in file order, for each key that appears more than once."""
        values = collections.defaultdict(list)
        for key, value in self.pairs:
            values[key].append(value)
        return {k: v for k, v in values.items() if len(v) > 1}


def _describe(obj: RepeatedKeys) -> str:
    keys = list(dict.fromkeys(k for k, _ in obj.pairs))
    return f"keys {keys[:8]}{' ...' if len(keys) > 8 else ''}"


def load_json(
    path: str | os.PathLike,
    what: str,
    repeats_handled_in: Callable[[object], object] | None = None,
) -> object:
    """json.load with errors that name the file and say what it should be.

    A key repeated within one object is an error: json.load keeps only the last value, so the
    rest of what the file says would be ignored silently. The one exception is the object that
    `repeats_handled_in(data)` returns (e.g. VIA's entries, where a repeat is one image to
    skip): there the caller gets a `RepeatedKeys` and deals with the repeats itself.
    """
    path = os.fspath(path)
    repeated: list[RepeatedKeys] = []

    def pairs_hook(pairs):
        obj = dict(pairs)
        if len(obj) == len(pairs):
            return obj
        obj = RepeatedKeys(pairs)
        repeated.append(obj)
        return obj

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f, object_pairs_hook=pairs_hook)
    except FileNotFoundError:
        raise BadInputError(f"{what} {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInputError(f"{what} {path} is not valid JSON: {e}") from None
    handled = repeats_handled_in(data) if repeated and repeats_handled_in else None
    for obj in repeated:
        if obj is handled:
            continue
        key, values = next(iter(obj.repeats().items()))
        scalars = all(isinstance(v, (str, int, float, bool, type(None))) for v in values)
        shown = f" (values {', '.join(repr(v)[:40] for v in values)})" if scalars else ""
        raise BadInputError(
            f"{what} {path}: key {key!r} appears {len(values)} times in one object "
            f"({_describe(obj)}){shown}; a JSON reader keeps only the last, so the rest of the "
            "file's content would be ignored: remove or rename the repeated key (not skippable)"
        )
    return data


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
        category_list = [(int(c["id"]), str(c["name"])) for c in data["categories"]]
    except (KeyError, TypeError, ValueError) as e:
        raise BadInputError(f"{json_path}: every category needs an id and a name ({e})") from None
    _check_unique_categories(category_list, json_path)
    by_id = dict(category_list)
    if class_names:
        check_class_names(class_names, json_path)
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

    image_dir = os.fspath(image_dir)
    entries = []  # (image id, file name, (height, width) or None) per well-formed entry
    for entry in data["images"]:
        try:
            image_id, file_name = int(entry["id"]), str(entry["file_name"])
        except (KeyError, TypeError, ValueError):
            policy.problem("malformed image entry", f"{json_path}: image entry {entry!r:.200}")
            continue
        hw = None
        if "height" in entry and "width" in entry:
            hw = (int(entry["height"]), int(entry["width"]))
        entries.append((image_id, file_name, hw))
    left_out = _repeated_images(entries, image_dir, json_path, policy)
    images: dict[int, ImageAnnotation] = {
        image_id: ImageAnnotation(image_id, os.path.join(image_dir, file_name), hw, [], json_path)
        for image_id, file_name, hw in entries
        if image_id not in left_out
    }
    repeated_ann_ids = _repeated_annotation_ids(data["annotations"], json_path, policy)

    for ann in data["annotations"]:
        ann_id = ann.get("id", "?") if isinstance(ann, dict) else "?"
        if isinstance(ann, dict) and "id" in ann and str(ann_id) in repeated_ann_ids:
            continue  # counted by _repeated_annotation_ids
        where = f"annotation {ann_id} in {json_path}"
        try:
            image_id, category_id = int(ann["image_id"]), int(ann["category_id"])
        except (KeyError, TypeError, ValueError):
            policy.problem(
                "malformed annotation", f"{where} needs integer image_id and category_id"
            )
            continue
        if image_id in left_out:
            policy.problem(
                "annotation of a left-out image",
                f"{where}: its image {image_id} is left out ({left_out[image_id]})",
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


def _check_unique_categories(categories: list[tuple[int, str]], json_path: str) -> None:
    """Raises on a category id or name used twice: the categories are the model's classes, so
    one cannot be skipped; json order would silently decide which one counts."""
    for cid, n in collections.Counter(cid for cid, _ in categories).items():
        if n > 1:
            names = ", ".join(repr(name) for i, name in categories if i == cid)
            raise BadInputError(
                f"category id {cid} is used by {n} categories ({names}) in {json_path}; "
                "category ids must be unique: remove the duplicate entry or give the other "
                "category a new id (and its annotations that category_id); not skippable, the "
                "categories are the model's classes"
            )
    for name, n in collections.Counter(name for _, name in categories).items():
        if n > 1:
            ids = [cid for cid, other in categories if other == name]
            raise BadInputError(
                f"category name {name!r} is used by {n} categories (ids {ids}) in {json_path}; "
                "names must be unique: rename one, or merge them into one category (one id for "
                "all their annotations); not skippable, the categories are the model's classes"
            )


def _repeated_images(
    entries: list[tuple[int, str, tuple[int, int] | None]],
    image_dir: str,
    json_path: str,
    policy: BadInputPolicy,
) -> dict[int, str]:
    """Image ids used by more than one entry, and files listed under more than one id.

    Nothing says which of the entries is right, nor which image an annotation of a repeated id
    belongs to, so (when the policy skips) every entry of such an id or file is left out
    (counted per entry), and their annotations with them (counted by the caller).

    Returns:
      {image id: why it is left out}.
    """
    repeated_ids = report_repeats(
        policy,
        "repeated image id",
        ((image_id, file_name) for image_id, file_name, _ in entries),
        lambda image_id, names: (
            f"image id {image_id} is used by {len(names)} entries of 'images' in {json_path} "
            f"(file_name {', '.join(repr(n) for n in names)}); each image needs its own id: "
            "remove the duplicate entry, or give the other image a new id (and its "
            "annotations that image_id)"
        ),
    )
    left_out = {
        image_id: f"image id {image_id} is repeated in 'images'" for image_id in repeated_ids
    }
    shared_files = report_repeats(
        policy,
        "image file listed by more than one image id",
        (
            (os.path.normpath(os.path.join(image_dir, file_name)), image_id)
            for image_id, file_name, _ in entries
            if image_id not in left_out
        ),
        lambda path, image_ids: (
            f"{path} is the file of image ids {image_ids} in {json_path}; each image belongs "
            "in 'images' once: remove the duplicate entries and give their annotations the "
            "id of the one kept"
        ),
    )
    for path, image_ids in shared_files.items():
        for image_id in image_ids:
            left_out[image_id] = f"its file {path} is listed by image ids {image_ids}"
    return left_out


def _repeated_annotation_ids(annotations: list, json_path: str, policy: BadInputPolicy) -> set[str]:
    """Annotation ids (as text, the form records store) used by more than one annotation.

    When the policy skips, every annotation with such an id is left out (counted per
    annotation): nothing says which is right, and records trace objects by their id.
    """
    repeated_ids = report_repeats(
        policy,
        "repeated annotation id",
        (
            (str(ann["id"]), ann.get("image_id"))
            for ann in annotations
            if isinstance(ann, dict) and "id" in ann
        ),
        lambda ann_id, on: (
            f"annotation id {ann_id} is used by {len(on)} annotations in {json_path} (of "
            f"image ids {on}); annotation ids must be unique: remove the duplicate "
            "annotation or give the other one a new id"
        ),
    )
    return set(repeated_ids)
