"""Open Images-style instance masks (a CSV + one PNG per instance) -> annotations.

    images = read_png_masks("train-annotations-object-segmentation.csv", "images/", "masks/",
                            class_names=["/m/05zsy"], policy=policy)

The CSV has a header with at least `MaskPath`, `ImageID` and `LabelName`; `BoxXMin`,
`BoxXMax`, `BoxYMin`, `BoxYMax` (fractions of the image size, as Open Images writes them) give
the box when present, else the box is the mask's. `MaskPath` is relative to the mask folder;
the image is `ImageID` + .jpg / .jpeg / .png in the image folder. A mask PNG whose size differs
from its image (Open Images masks are not at image resolution) is resized to it with nearest
neighbour. Class names are matched against LabelName exactly (for Open Images, the MIDs such as
"/m/05zsy"). Rows with an unknown LabelName, a missing image or mask, or a malformed box are
problems of the `BadInputPolicy`, as is a MaskPath in more than one row (one mask is one
instance; every such row is left out when skipping). Image ids are 1, 2, ... in order of first
appearance.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from msrcnn.data.sources.annotations import ImageAnnotation, MaskFile, ObjectAnnotation
from msrcnn.data.sources.bad_input import (
    BadInputError,
    BadInputPolicy,
    check_class_names,
    report_repeats,
)

_REQUIRED = ("MaskPath", "ImageID", "LabelName")
_BOX = ("BoxXMin", "BoxYMin", "BoxXMax", "BoxYMax")
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


def _find_image(image_dir: str, image_id: str) -> str | None:
    for ext in _IMAGE_EXTENSIONS:
        path = os.path.join(image_dir, image_id + ext)
        if os.path.exists(path):
            return path
    return None


def _repeated_masks(
    rows: list[dict], mask_dir: str, csv_path: str, policy: BadInputPolicy
) -> set[int]:
    """CSV lines of rows whose MaskPath another row also has.

    Several rows per ImageID are normal (one per instance), but a mask file is one instance:
    listed twice it is trained on twice, or (other LabelName) as two classes. Nothing says
    which row is right, so (when the policy skips) every row of such a mask is left out,
    counted per row.
    """
    lines = report_repeats(
        policy,
        "repeated MaskPath",
        (
            (os.path.normpath(os.path.join(mask_dir, row["MaskPath"] or "")), line)
            for line, row in enumerate(rows, start=2)
        ),
        lambda _, same: (
            f"MaskPath {rows[same[0] - 2]['MaskPath']!r} is in rows {same} of {csv_path}; "
            "a mask file is one instance: remove the duplicate rows"
        ),
    )
    return {line for same in lines.values() for line in same}


def read_png_masks(
    csv_path: str | os.PathLike,
    image_dir: str | os.PathLike,
    mask_dir: str | os.PathLike,
    class_names: list[str],
    policy: BadInputPolicy,
) -> list[ImageAnnotation]:
    """Reads the CSV (see the module docstring) into one ImageAnnotation per image."""
    csv_path, image_dir, mask_dir = (os.fspath(p) for p in (csv_path, image_dir, mask_dir))
    if not class_names:
        raise BadInputError(f"reading {csv_path}: PNG-mask data needs class_names")
    check_class_names(class_names, csv_path)
    label_of = {name: k + 1 for k, name in enumerate(class_names)}
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
            header = rows[0].keys() if rows else []
    except OSError as e:
        raise BadInputError(f"cannot read mask CSV {csv_path}: {e}") from None
    missing = [c for c in _REQUIRED if c not in header]
    if rows and missing:
        raise BadInputError(f"{csv_path} lacks the columns {missing}; it has {list(header)}")
    has_box = all(c in header for c in _BOX)

    repeated = _repeated_masks(rows, mask_dir, csv_path, policy)
    images: dict[str, ImageAnnotation] = {}
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        if line in repeated:
            continue  # counted by _repeated_masks
        where = f"row {line} of {csv_path}"
        name = row["LabelName"]
        if name not in label_of:
            policy.problem(
                "unknown class name",
                f"{where} has LabelName {name!r}, not one of class_names {class_names}",
            )
            continue
        image_id = row["ImageID"]
        if image_id not in images:
            path = _find_image(image_dir, image_id)
            if path is None:
                policy.problem(
                    "missing or unreadable image file",
                    f"{where}: no image {image_id}.jpg/.jpeg/.png in {image_dir}",
                )
                continue
            images[image_id] = ImageAnnotation(len(images) + 1, path, None, [], csv_path)
        box = None
        if has_box:
            try:
                box = np.array([float(row[c]) for c in _BOX], np.float64)
            except ValueError:
                policy.problem("malformed box", f"{where}: box {[row[c] for c in _BOX]}")
                continue
        images[image_id].objects.append(
            ObjectAnnotation(
                ann_id=f"row {line}",
                label=label_of[name],
                segmentation=MaskFile(os.path.join(mask_dir, row["MaskPath"])),
                box=box,
                box_is_relative=box is not None,
            )
        )
    return list(images.values())
