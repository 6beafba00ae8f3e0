"""MaskIoU calibration: true IoU against the best same-category ground truth, Pearson r."""

from __future__ import annotations

import numpy as np
import pytest

from msrcnn.evaluation import calibration, coco_eval
from tests.evaluation.coco_fixtures import detections, make_gt

HW = (64, 64)
# Image 1: a 20x20 object of category 1 (x 10..30, y 10..30), a 10x10 one of category 3
# (x 40..50, y 40..50) and a crowd region of category 1 that a detection sits on exactly.
GT = make_gt(
    [(1, *HW), (2, *HW)],
    [(1, 1, (10, 10, 30, 30)), (1, 3, (40, 40, 50, 50)), (1, 1, (0, 50, 20, 64))],
    crowd=(2,),
)

# (category, mask box, class score, predicted MaskIoU, true IoU by construction)
CASES = [
    (1, (10, 10, 30, 30), 0.9, 0.9, 1.0),  # the object itself
    (1, (10, 10, 30, 20), 0.8, 0.6, 0.5),  # its top half: 200 / 400
    (1, (10, 10, 20, 20), 0.7, 0.4, 0.25),  # a quarter: 100 / 400
    (3, (10, 10, 30, 30), 0.6, 0.3, 0.0),  # matches category 1's object, not its own
    (3, (40, 40, 50, 55), 0.5, 0.5, 100 / 150),  # category 3's object plus 50 pixels
    (1, (0, 50, 20, 64), 0.4, 0.2, 0.0),  # only on the crowd region: ignored
]


def image1_detections():
    dets = [(c, box, box, score, score * iou) for c, box, score, iou, _ in CASES]
    return detections(HW, dets)


def test_true_mask_ious():
    coco = coco_eval.load_ground_truth(GT)
    dets = image1_detections()
    pairs = calibration.CalibrationPairs()
    pairs.add(coco, 1, dets)
    pairs.add(coco, 2, dets)  # image 2 has no ground truth: every true IoU is 0
    predicted, true, cats = pairs.arrays()
    expected_pred = [c[3] for c in CASES]
    np.testing.assert_allclose(predicted, expected_pred * 2, rtol=1e-6)
    np.testing.assert_allclose(true[: len(CASES)], [c[4] for c in CASES])
    np.testing.assert_array_equal(true[len(CASES) :], 0.0)
    np.testing.assert_array_equal(cats, [c[0] for c in CASES] * 2)


def test_pearson_on_constructed_case():
    coco = coco_eval.load_ground_truth(GT)
    pairs = calibration.CalibrationPairs()
    pairs.add(coco, 1, image1_detections())
    summary = pairs.summary()
    pred = np.array([c[3] for c in CASES])
    true = np.array([c[4] for c in CASES])
    assert summary["n"] == len(CASES)
    assert summary["pearson_r"] == pytest.approx(np.corrcoef(pred, true)[0, 1], rel=1e-6)
    assert 0.8 < summary["pearson_r"] < 1.0
    assert summary["mean_abs_error"] == pytest.approx(np.abs(pred - true).mean(), rel=1e-6)
    assert summary["mean_true"] == pytest.approx(true.mean())


def test_pearson_edge_cases():
    assert calibration.pearson_r([0.1, 0.2, 0.3], [1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert calibration.pearson_r([0.1, 0.2, 0.3], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    # A model without a MaskIoU head predicts 1 everywhere: r is undefined.
    assert calibration.pearson_r([1.0, 1.0, 1.0], [0.2, 0.5, 0.9]) is None
    assert calibration.pearson_r([0.5], [0.5]) is None
    empty = calibration.CalibrationPairs().summary()
    assert empty == {
        "n": 0,
        "n_matched": 0,
        "pearson_r_matched": None,
        "pearson_r": None,
        "mean_abs_error": None,
        "mean_predicted": None,
        "mean_true": None,
    }


def test_matched_pearson_leaves_out_detections_without_ground_truth():
    predicted = np.array([0.9, 0.5, 0.2, 0.8, 0.7])
    true = np.array([0.85, 0.45, 0.3, 0.0, 0.0])  # the last two overlap nothing of their class
    summary = calibration.calibration_summary(predicted, true)
    assert summary["n"] == 5 and summary["n_matched"] == 3
    assert summary["pearson_r_matched"] == pytest.approx(np.corrcoef(predicted[:3], true[:3])[0, 1])
    assert summary["pearson_r"] == pytest.approx(np.corrcoef(predicted, true)[0, 1])
