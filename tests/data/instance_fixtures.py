"""Small datasets in each supported format, written by the tests into a temporary folder.

Every image is 48 x 64 (H x W) so that a height / width mix-up changes shapes. Pixels are
random; the annotations are simple geometric regions whose masks have an independent reference
(pycocotools' annToMask for COCO json, PIL for PNG masks, closed forms for VIA rectangles).
"""

from __future__ import annotations

import csv
import io
import json
import os

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from msrcnn.data.builders.tiny_coco import uncompressed_rle

H, W = 48, 64
CATEGORIES = [{"id": 5, "name": "cat"}, {"id": 17, "name": "dog"}, {"id": 2, "name": "bird"}]


def random_image(seed: int, hw=(H, W)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)


def save_jpeg(path, pixels, **kwargs) -> None:
    Image.fromarray(pixels).save(path, format="JPEG", quality=95, **kwargs)


def coco_dataset(root: str, num_images: int = 4) -> dict:
    """Writes root/images/*.jpg and root/train.json; returns the json dict.

    Per image: a polygon (triangle) 'cat', a two-polygon 'dog', a compressed-RLE 'bird' and,
    on image 0, a crowd region as uncompressed RLE. Image ids 101, 102, ...
    """
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        image_id = 101 + i
        name = f"img{i}.jpg"
        save_jpeg(os.path.join(root, "images", name), random_image(i))
        images.append({"id": image_id, "file_name": name, "height": H, "width": W})
        tri = [4.0 + i, 3.0, 30.5, 5.0, 12.0, 25.25]
        dog = [[35.0, 10.0, 60.0, 10.0, 60.0, 20.0, 35.0, 20.0], [40.0, 30.0, 55.0, 30.0, 47, 44]]
        bird = np.zeros((H, W), np.uint8)
        bird[30:46, 2:20] = 1
        bird[36:40, 8:12] = 0
        rle = mask_utils.encode(np.asfortranarray(bird))
        anns = [
            (5, [tri], [4.0 + i, 3.0, 26.5 - i, 22.25], 0),
            (17, dog, [35.0, 10.0, 25.0, 34.0], 0),
            (2, {"size": [H, W], "counts": rle["counts"].decode()}, [2.0, 30.0, 18.0, 16.0], 0),
        ]
        if i == 0:
            crowd = np.zeros((H, W), np.uint8)
            crowd[0:10, 40:64] = 1
            anns.append((17, uncompressed_rle(crowd), [40.0, 0.0, 24.0, 10.0], 1))
        for category_id, segmentation, bbox, iscrowd in anns:
            annotations.append(
                {
                    "id": 1000 + len(annotations),
                    "image_id": image_id,
                    "category_id": category_id,
                    "segmentation": segmentation,
                    "bbox": bbox,
                    "area": 1.0,
                    "iscrowd": iscrowd,
                }
            )
    data = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    with open(os.path.join(root, "train.json"), "w") as f:
        json.dump(data, f)
    return data


def via_dataset(root: str, num_images: int = 3, regions_as_dict: bool = False) -> dict:
    """Writes root/*.jpg and root/via.json (VIA 2 export; VIA 1 dict regions if asked).

    Per image: a polygon 'balloon', a rect 'kite', a circle 'balloon', an ellipse 'kite'.
    """
    os.makedirs(root, exist_ok=True)
    entries = {}
    for i in range(num_images):
        name = f"photo{i}.jpg"
        save_jpeg(os.path.join(root, name), random_image(50 + i))
        regions = [
            {
                "shape_attributes": {
                    "name": "polygon",
                    "all_points_x": [5, 25 + i, 15],
                    "all_points_y": [5, 8, 30],
                },
                "region_attributes": {"class": "balloon"},
            },
            {
                "shape_attributes": {"name": "rect", "x": 30, "y": 4, "width": 20, "height": 10},
                "region_attributes": {"class": "kite"},
            },
            {
                "shape_attributes": {"name": "circle", "cx": 45.0, "cy": 32.0, "r": 9.0},
                "region_attributes": {"class": "balloon"},
            },
            {
                "shape_attributes": {
                    "name": "ellipse",
                    "cx": 15.0,
                    "cy": 38.0,
                    "rx": 10.0,
                    "ry": 5.0,
                    "theta": 0.3,
                },
                "region_attributes": {"class": {"kite": True, "balloon": False}},
            },
        ]
        if regions_as_dict:
            regions = {str(k): r for k, r in enumerate(regions)}
        size = os.path.getsize(os.path.join(root, name))
        entries[f"{name}{size}"] = {
            "filename": name,
            "size": size,
            "regions": regions,
            "file_attributes": {},
        }
    with open(os.path.join(root, "via.json"), "w") as f:
        json.dump(entries, f)
    return entries


def png_mask_dataset(root: str, num_images: int = 3) -> list[dict]:
    """Writes root/images/<ImageID>.jpg, root/masks/*.png (at HALF the image size, as Open
    Images masks often differ from their image) and root/masks.csv; returns the CSV rows."""
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "masks"), exist_ok=True)
    rows = []
    for i in range(num_images):
        image_id = f"{0xABC0 + i:x}"
        save_jpeg(os.path.join(root, "images", f"{image_id}.jpg"), random_image(90 + i))
        for k, (label, box) in enumerate(
            [("/m/pumpkin", (4, 4, 30, 20)), ("/m/leaf", (20, 10, 60, 40))]
        ):
            small = np.zeros((H // 2, W // 2), np.uint8)
            x1, y1, x2, y2 = (v // 2 for v in box)
            small[y1:y2, x1:x2] = 255
            small[y1 + 2 : y1 + 4, x1 + 3 : x1 + 5] = 0
            mask_name = f"{image_id}_{k}.png"
            Image.fromarray(small).save(os.path.join(root, "masks", mask_name))
            rows.append(
                {
                    "MaskPath": mask_name,
                    "ImageID": image_id,
                    "LabelName": label,
                    "BoxID": f"b{k}",
                    "BoxXMin": box[0] / W,
                    "BoxXMax": box[2] / W,
                    "BoxYMin": box[1] / H,
                    "BoxYMax": box[3] / H,
                }
            )
    with open(os.path.join(root, "masks.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def jpeg_with_exif_orientation(pixels: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()
