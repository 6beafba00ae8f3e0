"""VGG Image Annotator (VIA 1.x / 2.x) region json -> annotations (the balloon dataset format).

    images = read_via_json("balloon/train/via_region_data.json", "balloon/train",
                           class_names=["balloon"], class_attribute="class", policy=policy)

Accepted files: VIA's "export annotations as json" (a dict of entries with `filename` and
`regions`, regions as a list (VIA 2) or a dict of index -> region (VIA 1)), and a VIA 2 project
file (the same entries under `_via_img_metadata`). VIA 3 projects use another layout: export
them as VIA 2 json first.

Region shapes: `polygon` / `polyline` (all_points_x / all_points_y), `rect` (x, y, width,
height), `circle` (cx, cy, r) and `ellipse` (cx, cy, rx, ry, optional theta in radians). They are
turned into COCO polygons (circles and ellipses as 64-gons) and rasterised by pycocotools like
COCO's own polygons, with points in continuous pixel coordinates (pixel (i, j) covers
[j, j + 1) x [i, i + 1)). Points and unsupported shapes are problems of the `BadInputPolicy`.

The class is the region attribute `class_attribute` (a text value, or the one checked box of a
checkbox attribute). Without that attribute a region belongs to the only class when there is
one (the balloon dataset has no attributes); otherwise it is a problem, as is an unknown name.
Image ids are 1, 2, ... in file order (the place of the entry in the file, so leaving an entry
out does not renumber the others).

An entry key that appears more than once (a JSON reader would silently keep the last) and a
filename that more than one entry has are problems: when skipping, every such entry is left out
(nothing says which is right). Any other key repeated within an object is an error.
"""

from __future__ import annotations

import math
import os

import numpy as np

from msrcnn.data.sources.annotations import ImageAnnotation, ObjectAnnotation
from msrcnn.data.sources.bad_input import (
    BadInputError,
    BadInputPolicy,
    check_class_names,
    report_repeats,
)
from msrcnn.data.sources.coco_json import RepeatedKeys, load_json

_ELLIPSE_VERTICES = 64


def _region_polygon(shape: dict) -> list[float]:
    """A VIA shape_attributes dict -> flat COCO polygon [x0, y0, x1, y1, ...]."""
    name = shape.get("name")
    if name in ("polygon", "polyline"):
        xs, ys = shape["all_points_x"], shape["all_points_y"]
        if len(xs) != len(ys):
            raise ValueError(f"{len(xs)} x but {len(ys)} y coordinates")
        return [float(v) for xy in zip(xs, ys, strict=True) for v in xy]
    if name == "rect":
        x, y, w, h = (float(shape[k]) for k in ("x", "y", "width", "height"))
        return [x, y, x + w, y, x + w, y + h, x, y + h]
    if name in ("circle", "ellipse"):
        cx, cy = float(shape["cx"]), float(shape["cy"])
        if name == "circle":
            rx = ry = float(shape["r"])
            theta = 0.0
        else:
            rx, ry, theta = float(shape["rx"]), float(shape["ry"]), float(shape.get("theta", 0))
        t = np.arange(_ELLIPSE_VERTICES) * (2 * math.pi / _ELLIPSE_VERTICES)
        x, y = rx * np.cos(t), ry * np.sin(t)
        c, s = math.cos(theta), math.sin(theta)
        xy = np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)
        return xy.reshape(-1).tolist()
    raise ValueError(f"unsupported region shape {name!r} (polygon, rect, circle, ellipse)")


def _region_class(attributes: dict, class_attribute: str) -> str | None:
    value = attributes.get(class_attribute) if isinstance(attributes, dict) else None
    if isinstance(value, dict):  # checkbox attribute: {"name": true, ...}
        checked = [k for k, v in value.items() if v]
        return checked[0] if len(checked) == 1 else None
    return None if value in (None, "") else str(value)


def _entries_of(data: object) -> object:
    """The object of VIA entries: the file's top level, or a project's `_via_img_metadata`."""
    if isinstance(data, dict) and "_via_img_metadata" in data:
        return data["_via_img_metadata"]
    return data


def _repeated_entries(
    pairs: list[tuple[str, dict]], image_dir: str, json_path: str, policy: BadInputPolicy
) -> set[int]:
    """Places (in `pairs`) of entries whose key repeats, or whose file another entry also has.

    A repeated key is one image annotated twice (a JSON reader would keep only the last); two
    keys with one filename (VIA keys are filename + size) mean an older version of the file's
    regions. Nothing says which entry is right, so (when the policy skips) all of them are left
    out, counted per entry.
    """
    places = report_repeats(
        policy,
        "repeated VIA entry key",
        ((key, index) for index, (key, _) in enumerate(pairs)),
        lambda key, indices: (
            f"entry key {key!r} appears {len(indices)} times in {json_path}; VIA has one "
            "entry per image: merge their regions into one entry and remove the others"
        ),
    )
    left_out = {index for indices in places.values() for index in indices}

    def shared_file(_, indices):
        keys = ", ".join(repr(pairs[i][0]) for i in indices)
        return (
            f"{pairs[indices[0]][1]['filename']} is the file of {len(indices)} entries "
            f"(keys {keys}) in {json_path}; VIA has one entry per image: merge their "
            "regions into one entry and remove the others"
        )

    by_file = report_repeats(
        policy,
        "VIA image file listed by more than one entry",
        (
            (os.path.normpath(os.path.join(image_dir, str(entry["filename"]))), index)
            for index, (_, entry) in enumerate(pairs)
            if index not in left_out
        ),
        shared_file,
    )
    return left_out | {index for indices in by_file.values() for index in indices}


def read_via_json(
    json_path: str | os.PathLike,
    image_dir: str | os.PathLike,
    class_names: list[str],
    policy: BadInputPolicy,
    class_attribute: str = "class",
) -> list[ImageAnnotation]:
    """Reads a VIA json (see the module docstring) into one ImageAnnotation per image."""
    json_path = os.fspath(json_path)
    if not class_names:
        raise BadInputError(f"reading {json_path}: VIA data needs class_names")
    check_class_names(class_names, json_path)
    data = _entries_of(load_json(json_path, "VIA annotation file", _entries_of))
    if isinstance(data, RepeatedKeys):
        pairs = data.pairs
    else:
        pairs = list(data.items()) if isinstance(data, dict) else None
    if pairs is None or any(not isinstance(v, dict) or "filename" not in v for _, v in pairs):
        raise BadInputError(
            f"{json_path} is not a VIA 1.x/2.x region file: expected an object of entries with "
            "'filename' and 'regions' (VIA 3 projects: export as VIA 2 json)"
        )
    image_dir = os.fspath(image_dir)
    left_out = _repeated_entries(pairs, image_dir, json_path, policy)
    label_of = {name: k + 1 for k, name in enumerate(class_names)}
    images = []
    for index, (_, entry) in enumerate(pairs):
        if index in left_out:
            continue
        image = ImageAnnotation(
            index + 1, os.path.join(image_dir, entry["filename"]), None, [], json_path
        )
        regions = entry.get("regions") or []
        if isinstance(regions, dict):  # VIA 1.x: {"0": region, "1": region}
            regions = [regions[k] for k in sorted(regions, key=lambda k: int(k))]
        for r, region in enumerate(regions):
            where = f"region {r} of {entry['filename']} in {json_path}"
            try:
                polygon = _region_polygon(region.get("shape_attributes", {}))
            except (KeyError, TypeError, ValueError) as e:
                policy.problem("malformed or unsupported VIA region", f"{where}: {e}")
                continue
            name = _region_class(region.get("region_attributes", {}), class_attribute)
            if name is None and len(class_names) == 1:
                name = class_names[0]
            if name is None:
                policy.problem(
                    "VIA region without a class",
                    f"{where} has no region attribute {class_attribute!r}; set it in VIA or "
                    "name the attribute holding the class (class_attribute)",
                )
                continue
            if name not in label_of:
                policy.problem(
                    "unknown class name",
                    f"{where} has class {name!r}, not one of class_names {class_names}",
                )
                continue
            image.objects.append(ObjectAnnotation(r, label_of[name], [polygon]))
        images.append(image)
    return images
