"""Detections -> COCO results, and detect() outputs -> Detections in original pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_util

from msrcnn.evaluation import coco_eval, coco_format
from msrcnn.evaluation.coco_format import BBOX, SEGM, SEGM_MS
from tests.evaluation.coco_fixtures import CATEGORY_IDS, detections, make_gt


def test_rle_round_trip():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 17, 23)) > 0.6  # odd sizes catch row/column-major mix-ups
    masks[1] = False  # an empty mask encodes too
    rles = coco_format.encode_masks(masks)
    assert [r["size"] for r in rles] == [[17, 23]] * 3
    assert all(isinstance(r["counts"], str) for r in rles)
    json.dumps(rles)
    decoded = mask_util.decode(rles)  # [H, W, N]
    np.testing.assert_array_equal(decoded.transpose(2, 0, 1).astype(bool), masks)
    np.testing.assert_array_equal(mask_util.area(rles), masks.sum(axis=(1, 2)))
    assert coco_format.encode_masks(np.zeros((0, 5, 5), bool)) == []


def test_image_results_three_lists():
    hw = (40, 50)
    dets = detections(
        hw,
        [
            (90, (2.5, 3.0, 12.5, 20.0), (2, 3, 12, 20), 0.9, 0.45),
            (3, (10.0, 0.0, 50.0, 40.0), (10, 0, 50, 40), 0.6, 0.5),
        ],
    )
    out = coco_format.image_results(np.int64(11), dets)
    assert set(out) == {BBOX, SEGM, SEGM_MS}
    assert [r["bbox"] for r in out[BBOX]] == [[2.5, 3.0, 10.0, 17.0], [10.0, 0.0, 40.0, 40.0]]
    for key in (BBOX, SEGM, SEGM_MS):
        assert [r["image_id"] for r in out[key]] == [11, 11]
        assert [r["category_id"] for r in out[key]] == [90, 3]
    assert [r["score"] for r in out[BBOX]] == pytest.approx([0.9, 0.6])
    assert [r["score"] for r in out[SEGM]] == pytest.approx([0.9, 0.6])
    assert [r["score"] for r in out[SEGM_MS]] == pytest.approx([0.45, 0.5])
    # Segm results have no "bbox": loadRes must take their area from the mask.
    assert all("bbox" not in r for r in out[SEGM] + out[SEGM_MS])
    for plain, ms, mask in zip(out[SEGM], out[SEGM_MS], dets.masks, strict=True):
        assert plain["segmentation"] == ms["segmentation"]
        np.testing.assert_array_equal(mask_util.decode(plain["segmentation"]).astype(bool), mask)
    text = json.dumps(out)  # plain Python types only
    assert json.loads(text) == out


def fake_outputs():
    """detect() outputs for a batch of 2 images (the second is batch padding), D = 3."""
    boxes = np.zeros((2, 3, 4), np.float32)
    boxes[0] = [[10, 5, 30, 25], [0, 0, 80, 50], [0, 0, 0, 0]]
    labels = np.array([[3, 1, 0], [2, 0, 0]], np.int32)
    valid = labels > 0
    scores = np.array([[0.9, 0.7, 0.0], [0.5, 0, 0]], np.float32)
    maskiou = np.array([[0.5, 0.8, 0.0], [0.3, 0, 0]], np.float32)
    return {
        "boxes": boxes,
        "labels": labels,
        "scores": scores,
        "mask_probs": np.ones((2, 3, 28, 28), np.float32),
        "maskiou": maskiou,
        "mask_scores": scores * maskiou,
        "valid": valid,
    }


def test_batch_to_detections_rescales_and_maps_categories():
    # Input image 50 x 80 (h x w) inside the padding, original 100 x 120: y x2, x x1.5.
    batch = {
        "image_id": np.array([123, -1]),
        "image_hw": np.array([[50, 80], [64, 64]], np.int32),
        "orig_hw": np.array([[100, 120], [64, 64]], np.int32),
    }
    out = coco_format.batch_to_detections(fake_outputs(), batch, CATEGORY_IDS)
    assert [image_id for image_id, _ in out] == [123]  # the padding image is skipped
    dets = out[0][1]
    assert len(dets) == 2
    np.testing.assert_allclose(dets.boxes, [[15, 10, 45, 50], [0, 0, 120, 100]])
    np.testing.assert_array_equal(dets.classes, [3, 1])
    np.testing.assert_array_equal(dets.labels, [90, 1])  # class c -> CATEGORY_IDS[c - 1]
    np.testing.assert_allclose(dets.scores, [0.9, 0.7])
    np.testing.assert_allclose(dets.mask_scores, [0.45, 0.56])
    assert dets.masks.shape == (2, 100, 120) and dets.masks.dtype == bool
    # An all-ones 28x28 mask pastes to (about) its box: within a pixel of the scaled box
    # (torchvision's paste blends in a zero border, so edge pixels may fall below 0.5).
    for mask, (x1, y1, x2, y2) in zip(dets.masks, dets.boxes, strict=True):
        ys, xs = np.nonzero(mask)
        assert abs(xs.min() - x1) <= 1 and abs(xs.max() + 1 - x2) <= 1
        assert abs(ys.min() - y1) <= 1 and abs(ys.max() + 1 - y2) <= 1


def test_class_out_of_range():
    outputs = {key: value[0] for key, value in fake_outputs().items()}
    with pytest.raises(ValueError, match="classes"):
        coco_format.outputs_to_detections(outputs, (50, 80), (100, 120), CATEGORY_IDS[:2])


def test_write_results(tmp_path):
    dets = detections((8, 8), [(1, (0, 0, 4, 4), (0, 0, 4, 4), 0.5, 0.25)])
    results = coco_format.coco_results([(1, dets), (2, detections((8, 8), []))])
    assert [len(results[k]) for k in (BBOX, SEGM, SEGM_MS)] == [1, 1, 1]
    paths = coco_format.write_results(results, str(tmp_path))
    for key, path in paths.items():
        with open(path) as f:
            assert json.load(f) == results[key]


def test_bucketed_paste_equals_exact_paste():
    # Boxes crossing the right/bottom border and odd original sizes: the canvas paste
    # cropped to the image must equal the exact-size paste pixel for pixel.
    rng = np.random.default_rng(1)
    d = 6
    outputs = {
        "boxes": np.array(
            [[0, 0, 40, 30], [30.3, 20.7, 64, 48], [5.5, 40.2, 63.9, 47.9]] * 2, np.float32
        ),
        "labels": np.array([1, 2, 3, 1, 2, 3]),
        "scores": rng.random(d).astype(np.float32),
        "mask_probs": rng.random((d, 28, 28)).astype(np.float32),
        "mask_scores": rng.random(d).astype(np.float32),
        "valid": np.array([True] * 5 + [False]),
    }
    args = (outputs, (48, 64), (97, 131), CATEGORY_IDS)
    bucketed = coco_format.outputs_to_detections(*args)
    exact = coco_format.outputs_to_detections(*args, paste_multiple=1)
    assert bucketed.masks.shape == exact.masks.shape == (5, 97, 131)
    np.testing.assert_array_equal(bucketed.masks, exact.masks)
    assert exact.masks[:, -1, :].any() and exact.masks[:, :, -1].any()  # borders reached


def test_detect_outputs_to_coco_ap():
    # The whole chain: detect() outputs in input pixels -> original pixels -> COCO results
    # -> COCOeval. The ground truth holds the rescaled boxes under their dataset ids.
    batch = {
        "image_id": np.array([123, -1]),
        "image_hw": np.array([[50, 80], [64, 64]], np.int32),
        "orig_hw": np.array([[100, 120], [64, 64]], np.int32),
    }
    items = coco_format.batch_to_detections(fake_outputs(), batch, CATEGORY_IDS)
    gt = make_gt([(123, 100, 120)], [(123, 90, (15, 10, 45, 50)), (123, 1, (0, 0, 120, 100))])
    table = coco_eval.evaluate(gt, coco_format.coco_results(items))
    for row in table.rows.values():
        # Pasted all-ones masks match their boxes up to edge pixels: IoU > 0.9.
        assert row["AP50"] == pytest.approx(1.0)
    assert table.rows["bbox"]["AP"] == pytest.approx(1.0)
