"""msrcnn reproduces torchvision's maskrcnn_resnet50_fpn on converted weights.

The weights are regenerated from a seed (tests/seeded_weights.py, numpy only), converted with
`msrcnn.weights.torchvision`, and run through `Predictor` on the golden images; the expected
outputs come from torchvision itself (tests/testdata/make_golden_maskrcnn.py). Criteria:
  * detections: at least 99% of torchvision's detections have an msrcnn twin (same label, box
    IoU >= 0.99, |score difference| <= 1e-3), also among those touching the image border;
    the pasted masks of twins have IoU >= 0.98;
  * RPN proposals: the same count, and at least 99% of torchvision's proposals have a twin
    (box IoU >= 0.99, |objectness difference| <= 1e-3).
The full R50-FPN compiles once: all golden images pad to the same 256 x 320 input.
"""

from __future__ import annotations

import numpy as np
import pytest

from msrcnn.predictor import Predictor
from msrcnn.weights import torchvision as tv_weights
from tests import seeded_weights
from tests.conftest import load_golden

NUM_IMAGES = 3
MIN_TWIN_FRACTION = 0.99
BOX_IOU, SCORE_TOL, MASK_IOU = 0.99, 1e-3, 0.98


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, 4], [M, 4] xyxy -> [N, M] IoU (numpy, float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=-1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=-1)
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-12)


def find_twins(ref_boxes, ref_scores, boxes, scores, ref_labels=None, labels=None):
    """For each reference box, its best-overlapping candidate (same label when given).

    Returns (index [N] into the candidates, is_twin [N] bool): a twin has IoU >= BOX_IOU and
    |score difference| <= SCORE_TOL.
    """
    if len(boxes) == 0:
        return np.zeros(len(ref_boxes), int), np.zeros(len(ref_boxes), bool)
    iou = box_iou(ref_boxes, boxes)
    if ref_labels is not None:
        iou = np.where(np.asarray(ref_labels)[:, None] == np.asarray(labels)[None], iou, -1.0)
    # Among overlapping candidates prefer the closest score (near-duplicate proposals).
    close = iou >= BOX_IOU
    score_gap = np.abs(np.asarray(ref_scores)[:, None] - np.asarray(scores)[None])
    index = np.where(close.any(1), np.where(close, score_gap, np.inf).argmin(1), iou.argmax(1))
    rows = np.arange(len(ref_boxes))
    is_twin = (iou[rows, index] >= BOX_IOU) & (score_gap[rows, index] <= SCORE_TOL)
    return index, is_twin


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, H, W] bool pairs -> [N] IoU (1 where both are empty)."""
    inter = (a & b).sum(axis=(1, 2))
    union = (a | b).sum(axis=(1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def touches_border(boxes: np.ndarray, image_hw) -> np.ndarray:
    """[N] bool: the (clipped) box lies on an image edge."""
    h, w = image_hw
    return (boxes[:, 0] <= 0) | (boxes[:, 1] <= 0) | (boxes[:, 2] >= w) | (boxes[:, 3] >= h)


def golden_detections(golden, i):
    h, w = golden[f"image{i}"].shape[:2]
    packed = golden[f"det{i}_masks"]
    masks = np.unpackbits(packed, axis=1, count=h * w).reshape(-1, h, w).astype(bool)
    return golden[f"det{i}_boxes"], golden[f"det{i}_labels"], golden[f"det{i}_scores"], masks


@pytest.fixture(scope="module")
def golden():
    return load_golden("maskrcnn")


@pytest.fixture(scope="module")
def predictor(golden):
    """Seeded weights -> msrcnn variables -> Predictor at the fixture's resize settings."""
    state_dict = seeded_weights.state_dict(seeded_weights.load_spec(), int(golden["seed"]))
    config = tv_weights.config_for_state_dict(state_dict)
    variables, report = tv_weights.convert_torchvision_state_dict(state_dict, config)
    assert report.fresh == ["maskiou_head"]
    config.data.min_size = int(golden["min_size"])
    config.data.max_size = int(golden["max_size"])
    return Predictor(config, variables)


@pytest.fixture(scope="module")
def outputs(golden, predictor):
    """Per image: (Detections, raw detect() outputs, (boxes, scores, valid) of the RPN)."""
    results = []
    for i in range(NUM_IMAGES):
        image = golden[f"image{i}"]
        detections = predictor(image)
        raw, hw = predictor.raw(image)
        rpn = tuple(
            np.asarray(raw[k][0]) for k in ("proposals", "proposal_scores", "proposal_valid")
        )
        results.append((detections, raw, hw, rpn))
    return results


@pytest.mark.parametrize("i", range(NUM_IMAGES))
def test_resize_matches_torchvision(golden, outputs, i):
    assert tuple(outputs[i][2]) == tuple(golden[f"image_hw{i}"])


def test_fixture_exercises_the_criteria(golden):
    """The golden detections are varied enough for the comparison to mean something."""
    for i in range(NUM_IMAGES):
        _, labels, scores, masks = golden_detections(golden, i)
        assert len(scores) >= 50
        assert len(np.unique(scores)) == len(scores)  # distinct scores: ranking is well defined
        assert len(np.unique(labels)) >= 3
        assert masks.any(axis=(1, 2)).mean() > 0.9  # masks are not empty (nor all 0.5)
        assert (~masks).any(axis=(1, 2)).all()
    border = sum(
        touches_border(golden_detections(golden, i)[0], golden[f"image{i}"].shape[:2]).sum()
        for i in range(NUM_IMAGES)
    )
    assert border >= 10


@pytest.mark.parametrize("i", range(NUM_IMAGES))
def test_detections_have_twins(golden, outputs, i):
    boxes, labels, scores, _ = golden_detections(golden, i)
    ours = outputs[i][0]
    _, is_twin = find_twins(boxes, scores, ours.boxes, ours.scores, labels, ours.labels)
    assert is_twin.mean() >= MIN_TWIN_FRACTION, f"{is_twin.sum()} / {len(is_twin)} twins"
    assert len(ours) == len(scores)
    border = touches_border(boxes, golden[f"image{i}"].shape[:2])
    assert border.any()
    assert is_twin[border].mean() >= MIN_TWIN_FRACTION


@pytest.mark.parametrize("i", range(NUM_IMAGES))
def test_masks_of_twins(golden, outputs, i):
    boxes, labels, scores, masks = golden_detections(golden, i)
    ours = outputs[i][0]
    index, is_twin = find_twins(boxes, scores, ours.boxes, ours.scores, labels, ours.labels)
    iou = mask_iou(masks[is_twin], ours.masks[index[is_twin]])
    worst = np.argsort(iou)[:3]
    assert (iou >= MASK_IOU).all(), (
        f"mask IoU {iou[worst]} of twins {np.nonzero(is_twin)[0][worst]}"
    )


@pytest.mark.parametrize("i", range(NUM_IMAGES))
def test_proposals_match(golden, outputs, i):
    _, _, _, (boxes, scores, valid) = outputs[i]
    ref_boxes, ref_scores = golden[f"prop{i}_boxes"], golden[f"prop{i}_scores"]
    assert valid.sum() == len(ref_boxes)
    _, is_twin = find_twins(ref_boxes, ref_scores, boxes[valid], scores[valid])
    assert is_twin.mean() >= MIN_TWIN_FRACTION, f"{is_twin.sum()} / {len(is_twin)} twins"
