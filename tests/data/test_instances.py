"""Real-data builders: COCO json, VIA json and PNG-mask CSV, checked against independent
rasterisations (pycocotools annToMask, PIL, closed forms), with id round trips."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from msrcnn.data.builders import instances
from msrcnn.data.builders.coco_gt import coco_ground_truth
from msrcnn.data.builders.records import decode_record
from tests.data import instance_fixtures as fx


def _records(builder, split="train"):
    source = builder.as_data_source(split)
    return [source[i] for i in range(len(source))]


@pytest.fixture(scope="module")
def coco_built(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("coco_src"))
    data = fx.coco_dataset(root)
    builder = instances.build_custom(
        tmp_path_factory.mktemp("tfds"),
        "coco",
        [],
        train={"annotations": os.path.join(root, "train.json"), "images": f"{root}/images"},
        validation={"annotations": os.path.join(root, "train.json"), "images": f"{root}/images"},
    )
    return root, data, builder


def test_coco_masks_match_pycocotools(coco_built):
    root, data, builder = coco_built
    reference = COCO(os.path.join(root, "train.json"))
    records = _records(builder)
    assert len(records) == len(data["images"])
    checked = 0
    for record in records:
        inst = decode_record(record)
        anns = reference.loadAnns(reference.getAnnIds(imgIds=[inst.image_id]))
        assert len(anns) == len(inst.labels)
        by_id = {str(a["id"]): a for a in anns}
        for k, ann_id in enumerate(record["objects"]["ann_id"]):
            ann = by_id[ann_id.decode() if isinstance(ann_id, bytes) else str(ann_id)]
            np.testing.assert_array_equal(inst.masks[k], reference.annToMask(ann) != 0)
            x, y, w, h = ann["bbox"]
            np.testing.assert_allclose(inst.boxes[k], [x, y, x + w, y + h], atol=1e-5)
            assert inst.is_crowd[k] == bool(ann["iscrowd"])
            checked += 1
    assert checked == len(data["annotations"])


def test_coco_ids_round_trip(coco_built):
    _, data, builder = coco_built
    meta = builder.info.metadata
    # Contiguous labels in increasing category id: bird (2), cat (5), dog (17).
    assert meta["category_ids"] == [2, 5, 17]
    assert meta["class_names"] == ["bird", "cat", "dog"]
    records = _records(builder, "validation")
    assert [int(r["image_id"]) for r in records] == [im["id"] for im in data["images"]]
    gt = coco_ground_truth(
        builder.as_data_source("validation"),
        class_names=meta["class_names"],
        category_ids=meta["category_ids"],
    )
    assert sorted(c["id"] for c in gt["categories"]) == [2, 5, 17]
    source_cats = sorted(
        (a["image_id"], a["category_id"], a["iscrowd"]) for a in data["annotations"]
    )
    gt_cats = sorted((a["image_id"], a["category_id"], a["iscrowd"]) for a in gt["annotations"])
    assert gt_cats == source_cats
    # COCO's own areas (the fixture writes 1.0) reach the ground truth for COCOeval's ranges.
    assert {a["area"] for a in gt["annotations"]} == {1.0}
    # The crowd region is in the ground truth but not among training instances.
    inst = decode_record(records[0])
    assert inst.is_crowd.sum() == 1 and len(inst.without_crowd().labels) == len(inst.labels) - 1
    assert meta["splits"]["train"]["num_instances"] == [3, 3, 3, 3]
    assert meta["splits"]["train"]["image_hw"] == [[fx.H, fx.W]] * 4


def test_coco_keeps_original_jpeg_bytes(coco_built):
    root, _, builder = coco_built
    record = builder.as_data_source("train")[0]
    with open(os.path.join(root, "images", "img0.jpg"), "rb") as f:
        original = np.asarray(Image.open(f).convert("RGB"))
    np.testing.assert_array_equal(record["image"], original)


def test_via_regions(tmp_path):
    fx.via_dataset(str(tmp_path / "via"))
    builder = instances.build_custom(
        tmp_path / "tfds",
        "via",
        ["balloon", "kite"],
        train={"annotations": str(tmp_path / "via" / "via.json"), "images": str(tmp_path / "via")},
    )
    records = _records(builder)
    assert len(records) == 3
    yy, xx = np.mgrid[0 : fx.H, 0 : fx.W] + 0.5  # pixel centres
    for i, record in enumerate(records):
        inst = decode_record(record)
        np.testing.assert_array_equal(inst.labels, [1, 2, 1, 2])
        # Polygon: identical to pycocotools' rasterisation of the same COCO polygon.
        poly = [5, 5, 25 + i, 8, 15, 30]
        expect = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([poly], fx.H, fx.W)))
        np.testing.assert_array_equal(inst.masks[0], expect != 0)
        # Rect x 30..50, y 4..14 (pixel edges): exactly those pixels.
        rect = np.zeros((fx.H, fx.W), bool)
        rect[4:14, 30:50] = True
        np.testing.assert_array_equal(inst.masks[1], rect)
        np.testing.assert_allclose(inst.boxes[1], [30, 4, 50, 14])
        # Circle r = 9 at (45, 32): a 64-gon, so only pixels on the boundary may differ.
        disk = (xx - 45.0) ** 2 + (yy - 32.0) ** 2 <= 81.0
        differ = inst.masks[2] != disk
        assert differ.sum() <= 6, differ.sum()
        assert inst.masks[2].sum() == pytest.approx(np.pi * 81, rel=0.05)


def test_via_1x_dict_regions_and_project_file(tmp_path):
    entries = fx.via_dataset(str(tmp_path / "via"), regions_as_dict=True)
    import json

    with open(tmp_path / "via" / "project.json", "w") as f:
        json.dump({"_via_settings": {}, "_via_img_metadata": entries}, f)
    builder = instances.build_custom(
        tmp_path / "tfds",
        "via",
        ["balloon", "kite"],
        train={
            "annotations": str(tmp_path / "via" / "project.json"),
            "images": str(tmp_path / "via"),
        },
    )
    assert [len(decode_record(r).labels) for r in _records(builder)] == [4, 4, 4]


def test_png_masks_resized_to_image(tmp_path):
    rows = fx.png_mask_dataset(str(tmp_path / "oi"))
    builder = instances.build_custom(
        tmp_path / "tfds",
        "png_masks",
        ["/m/pumpkin", "/m/leaf"],
        train={
            "annotations": str(tmp_path / "oi" / "masks.csv"),
            "images": str(tmp_path / "oi" / "images"),
            "masks": str(tmp_path / "oi" / "masks"),
        },
    )
    records = _records(builder)
    assert len(records) == 3
    for i, record in enumerate(records):
        inst = decode_record(record)
        for k in range(2):
            row = rows[2 * i + k]
            with Image.open(tmp_path / "oi" / "masks" / row["MaskPath"]) as m:
                expect = np.asarray(m.resize((fx.W, fx.H), Image.NEAREST)) != 0
            np.testing.assert_array_equal(inst.masks[k], expect)
            box = [row["BoxXMin"] * fx.W, row["BoxYMin"] * fx.H]
            box += [row["BoxXMax"] * fx.W, row["BoxYMax"] * fx.H]
            np.testing.assert_allclose(inst.boxes[k], box, atol=1e-4)
        assert inst.labels.tolist() == [1, 2]
    assert (
        builder.info.metadata["hygiene"]["train"]["mask image resized (nearest) to its image"] == 6
    )


def test_build_does_not_import_tensorflow(coco_built):
    assert "tensorflow" not in sys.modules or not hasattr(sys.modules["tensorflow"], "Tensor")


def test_each_coco_folder_builds_its_own_dataset(tmp_path):
    """The generated tiny_coco and then the real download into the same data_dir: the second
    must not reuse what the first built (both are COCO 2017 by year)."""
    from msrcnn.data.builders import tiny_coco

    data_dir = tmp_path / "tfds"
    tiny_coco.main([str(tmp_path / "a"), "--num_train=2", "--num_val=1", "--size=32"])
    tiny_coco.main([str(tmp_path / "b"), "--num_train=3", "--num_val=1", "--size=32"])
    first = instances.build_coco(data_dir, str(tmp_path / "a"))
    second = instances.build_coco(data_dir, str(tmp_path / "b"))
    assert first.info.splits["train"].num_examples == 2
    assert second.info.splits["train"].num_examples == 3
    # The same folder, named by another relative path, is the same dataset.
    again = instances.build_coco(data_dir, os.path.relpath(tmp_path / "a"))
    assert again.data_path == first.data_path
