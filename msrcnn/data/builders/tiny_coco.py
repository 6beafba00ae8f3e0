"""Writes a small COCO-layout folder drawn by the shapes renderer, to try the COCO code path.

    python -m msrcnn.data.builders.tiny_coco /tmp/tiny_coco \\
        [--num_train=16] [--num_val=8] [--size=96]
    python -m msrcnn.train --config=experiments/coco.py:runlocal \\
        --config.data.coco.manual_dir=/tmp/tiny_coco --workdir=/tmp/coco_runlocal

Layout as COCO 2017 (`annotations/instances_{train,val}2017.json`, `{train,val}2017/*.jpg`),
with COCO's conventions where they matter to a reader: category ids that are not 1..K
(3, 7, 12, 90), image ids that are not 1..N, masks as compressed RLE strings,
every 4th image with one extra crowd region (uncompressed RLE with list counts, iscrowd 1) and
one image without annotations.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from msrcnn.data.sources.shapes_render import CLASS_NAMES, render_example

CATEGORY_IDS = (3, 7, 12, 90)


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's crowd format: column-major run lengths starting with a run of zeros."""
    flat = mask.astype(np.uint8).flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": counts}


def write_split(root: str, part: str, num_images: int, size: int, seed: int) -> None:
    image_dir = os.path.join(root, f"{part}2017")
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        rng = np.random.default_rng([seed, 0 if part == "train" else 1, i])
        num_shapes = 0 if i == 1 else int(rng.integers(1, 4))
        ex = render_example(rng, (size, size), num_shapes, 24)
        image_id = 1000 + 7 * i
        file_name = f"{image_id:012d}.jpg"
        Image.fromarray(ex["image"]).save(os.path.join(image_dir, file_name), quality=95)
        images.append({"id": image_id, "file_name": file_name, "height": size, "width": size})
        for mask, label in zip(ex["masks"], ex["labels"], strict=True):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            x, y, w, h = mask_utils.toBbox(rle).tolist()
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": CATEGORY_IDS[int(label) - 1],
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                    "area": float(mask_utils.area(rle)),
                    "bbox": [x, y, w, h],
                    "iscrowd": 0,
                }
            )
        if i % 4 == 0:
            crowd = np.zeros((size, size), bool)
            crowd[: size // 8, : size // 4] = True
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": CATEGORY_IDS[0],
                    "segmentation": uncompressed_rle(crowd),
                    "area": float(crowd.sum()),
                    "bbox": [0.0, 0.0, size / 4, size / 8],
                    "iscrowd": 1,
                }
            )
    categories = [
        {"id": cid, "name": name, "supercategory": "shape"}
        for cid, name in zip(CATEGORY_IDS, CLASS_NAMES, strict=True)
    ]
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    with open(os.path.join(root, "annotations", f"instances_{part}2017.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


def write_tiny_coco(root: str, num_train: int = 16, num_val: int = 8, size: int = 96, seed=0):
    write_split(root, "train", num_train, size, seed)
    write_split(root, "val", num_val, size, seed)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root")
    parser.add_argument("--num_train", type=int, default=16)
    parser.add_argument("--num_val", type=int, default=8)
    parser.add_argument("--size", type=int, default=96)
    args = parser.parse_args(argv)
    write_tiny_coco(args.root, args.num_train, args.num_val, args.size)
    print(f"wrote a COCO-layout folder to {args.root}")


if __name__ == "__main__":
    main()
