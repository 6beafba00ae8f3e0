"""The synthetic `shapes` TFDS dataset: determinism, masks vs boxes, occlusion, COCO GT."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from msrcnn.data.builders import shapes
from msrcnn.data.builders.records import decode_record
from msrcnn.data.sources.shapes_render import render_example, tight_box
from tests.data.conftest import TINY


def _all(source):
    return [decode_record(source[i]) for i in range(len(source))]


def test_splits_and_metadata(tiny_builder, train_source, val_source):
    assert len(train_source) == TINY["num_train"]
    assert len(val_source) == TINY["num_validation"]
    assert tiny_builder.info.metadata["class_names"] == list(shapes.CLASS_NAMES)
    assert len(shapes.CLASS_NAMES) == 4
    assert tiny_builder.info.file_format.value == "array_record"
    for inst in _all(train_source) + _all(val_source):
        assert inst.image.shape == (*TINY["image_size"], 3) and inst.image.dtype == np.uint8
        assert inst.masks.shape[1:] == TINY["image_size"]
        assert np.isin(inst.labels, [1, 2, 3, 4]).all()
    # Records are in generation order: record i is image i (id i + 1).
    assert [decode_record(train_source[i]).image_id for i in range(16)] == list(range(1, 17))


def test_deterministic_by_seed(tiny_builder, train_source, tmp_path):
    again = shapes.build_shapes(tmp_path / "again", **TINY).as_data_source("train")
    other = shapes.build_shapes(tmp_path / "other", **{**TINY, "seed": 8})
    other = other.as_data_source("train")
    for i in (0, 5, 15):
        a, b = decode_record(train_source[i]), decode_record(again[i])
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.masks, b.masks)
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert not np.array_equal(a.image, decode_record(other[i]).image)
    # The renderer alone: same generator state, same example.
    x = render_example(np.random.default_rng(3), (32, 48), 4, 12)
    y = render_example(np.random.default_rng(3), (32, 48), 4, 12)
    for key in x:
        np.testing.assert_array_equal(x[key], y[key])


def test_boxes_are_tight_boxes_of_visible_masks(train_source, val_source):
    for inst in _all(train_source) + _all(val_source):
        assert len(inst.boxes) == len(inst.labels) == len(inst.masks)
        for box, mask in zip(inst.boxes, inst.masks, strict=True):
            assert mask.sum() >= 12  # min_visible_pixels
            ys, xs = np.nonzero(mask)
            np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            np.testing.assert_array_equal(box, tight_box(mask))


def test_occlusion_no_shared_pixels_and_overlaps_happen(train_source, val_source):
    overlapping_boxes = 0
    for inst in _all(train_source) + _all(val_source):
        assert inst.masks.sum(axis=0).max(initial=0) <= 1  # no pixel in two instances
        b = inst.boxes
        for i in range(len(b)):
            for j in range(i):
                w = min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0])
                h = min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1])
                overlapping_boxes += w > 0 and h > 0
    # Shapes do overlap (boxes intersect) while their visible masks stay disjoint.
    assert overlapping_boxes > 0


def test_occluded_instances_are_cut_or_dropped():
    # Draw many shapes on a small image: later shapes must carve the earlier ones.
    ex = render_example(np.random.default_rng(0), (24, 24), 12, 12)
    assert ex["masks"].sum(axis=0).max() <= 1
    assert len(ex["labels"]) < 12  # some were covered (below 12 visible pixels) and dropped
    assert all(m.sum() >= 12 for m in ex["masks"])


def test_empty_images_exist(train_source, val_source):
    for source in (train_source, val_source):
        counts = [len(inst.labels) for inst in _all(source)]
        assert counts[3] == 0  # index % 16 == 3 is drawn empty
        assert max(counts) <= 5
        assert sum(c > 0 for c in counts) >= len(counts) - 2


def test_size_range(train_source):
    areas = [m.sum() for inst in _all(train_source) for m in inst.masks]
    assert min(areas) < 60 and max(areas) > 400  # small and large objects


def test_registered_default_config_and_names(tmp_path):
    assert shapes.ShapesConfig().name == "seed0_128x128_train2000_val200_obj5_px12_r0.04_vis0"
    assert shapes.ShapesConfig(image_size=64).image_size == (64, 64)
    # A fresh default config object is accepted (TFDS would reject it as a name clash).
    builder = shapes.Shapes(config=shapes.ShapesConfig(), data_dir=tmp_path)
    assert builder.builder_config.name == shapes.ShapesConfig().name


# pycocotools' own decode trips a numpy 2 deprecation (`copy=False` in __array__).
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_coco_ground_truth(tiny_builder, val_source):
    gt = shapes.coco_ground_truth(tiny_builder, "validation")
    assert gt == shapes.coco_ground_truth(val_source)  # data source: same result
    records = [val_source[i] for i in range(len(val_source))]  # plain records: names needed
    assert gt == shapes.coco_ground_truth(records, class_names=shapes.CLASS_NAMES)
    with pytest.raises(ValueError, match="class_names"):
        shapes.coco_ground_truth(records)
    json.dumps(gt)  # serialisable
    assert [c["name"] for c in gt["categories"]] == list(shapes.CLASS_NAMES)
    assert [c["id"] for c in gt["categories"]] == [1, 2, 3, 4]
    insts = {inst.image_id: inst for inst in _all(val_source)}
    assert sorted(im["id"] for im in gt["images"]) == sorted(insts)
    assert [a["id"] for a in gt["annotations"]] == list(range(1, len(gt["annotations"]) + 1))
    seen = {i: 0 for i in insts}
    for ann in gt["annotations"]:
        inst = insts[ann["image_id"]]
        k = seen[ann["image_id"]]
        seen[ann["image_id"]] += 1
        decoded = mask_utils.decode(ann["segmentation"]).astype(bool)
        np.testing.assert_array_equal(decoded, inst.masks[k])
        assert ann["area"] == inst.masks[k].sum()
        assert ann["iscrowd"] == 0 and ann["category_id"] == inst.labels[k]
        np.testing.assert_allclose(ann["bbox"], mask_utils.toBbox(ann["segmentation"]))
    assert seen == {i: len(inst.labels) for i, inst in insts.items()}

    # Usable by COCOeval: the ground truth scored against itself is perfect.
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    dets = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "segmentation": a["segmentation"],
            "score": 1.0,
        }
        for a in gt["annotations"]
    ]
    evaluator = COCOeval(coco, coco.loadRes(dets), "segm")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


_NO_TF_SCRIPT = textwrap.dedent(
    """
    import sys, tempfile

    from msrcnn.data.builders import shapes
    from msrcnn.data.pipeline import pipeline

    with tempfile.TemporaryDirectory() as tmp:
        builder = shapes.build_shapes(tmp, seed=1, image_size=32, num_train=8, num_validation=4)
        source = builder.as_data_source("train")
        source[0]
        shapes.coco_ground_truth(builder, "validation")
        it = pipeline.make_train_iterator(source, 2, (32, 32), 4, 14, shard_index=0,
                                          shard_count=1)
        next(it)
        for _ in pipeline.make_eval_batches(builder.as_data_source("validation"), 3, (32, 32),
                                            shard_index=0, shard_count=1):
            pass
    loaded = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))
    assert not loaded, loaded
    print("OK")
    """
)


def test_no_tensorflow_needed_or_imported():
    """Build, read, COCO GT and the grain pipeline in a fresh interpreter: TensorFlow is never
    imported (so they run where it is not installed, as in the project's environment).

    Blocking the import instead (a None entry in sys.modules) does not work: TFDS reads any
    "tensorflow" key in sys.modules as "TensorFlow is loaded" and then uses it.
    """
    result = subprocess.run(
        [sys.executable, "-c", _NO_TF_SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("OK")


def test_occlusion_bound_and_minimum_size():
    bounded, free = [], []
    for i in range(40):
        ex = render_example(np.random.default_rng(i), (96, 96), 4, 12, 0.07, 0.6)
        bounded += ex["visible_fractions"].tolist()
        assert all(m.sum() >= 12 for m in ex["masks"])
        free += render_example(np.random.default_rng(i), (96, 96), 4, 12)[
            "visible_fractions"
        ].tolist()
    assert min(bounded) >= 0.6
    assert min(free) < 0.6  # without the bound, heavy occlusion happens
    # The default keeps the dataset as it was: same draws, same images.
    a = render_example(np.random.default_rng(5), (64, 64), 3, 12)
    b = render_example(np.random.default_rng(5), (64, 64), 3, 12, 0.04, 0.0)
    np.testing.assert_array_equal(a["image"], b["image"])
