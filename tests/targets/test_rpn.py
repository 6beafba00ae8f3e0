"""Tests for msrcnn.targets.rpn: hand-built IoU cases, sampling counts, padding, empty ground
truth, jit / vmap, and torchvision's anchor assignment (golden)."""

import jax
import numpy as np
import pytest

from msrcnn.targets.rpn import rpn_targets
from tests.conftest import load_golden

KEY = jax.random.key(0)


def encode(gt, anchors):
    """R-CNN deltas, weights (1, 1, 1, 1), in float64 numpy."""
    gt, anchors = np.asarray(gt, np.float64), np.asarray(anchors, np.float64)
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    gx, gy = gt[:, 0] + 0.5 * gw, gt[:, 1] + 0.5 * gh
    return np.stack([(gx - ax) / aw, (gy - ay) / ah, np.log(gw / aw), np.log(gh / ah)], 1)


_rpn_targets = jax.jit(
    rpn_targets,
    static_argnames=(
        "batch_size_per_image",
        "positive_fraction",
        "thresholds",
        "allow_low_quality",
    ),
)


def run(anchors, gt_boxes, gt_valid=None, key=KEY, **kwargs):
    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    if gt_valid is None:
        gt_valid = np.ones(len(gt_boxes), bool)
    labels, targets = _rpn_targets(
        key, np.asarray(anchors, np.float32), gt_boxes, gt_valid, **kwargs
    )
    assert labels.dtype == np.int32 and targets.dtype == np.float32
    return np.asarray(labels), np.asarray(targets)


# GT 0 = [0, 0, 10, 10]; GT 1 = [100, 100, 110, 110]. IoUs of each anchor with its GT:
HAND_GT = [[0, 0, 10, 10], [100, 100, 110, 110]]
HAND_ANCHORS = [
    [0, 0, 10, 10],  # 1.0 with GT 0 -> positive
    [0, 0, 10, 8],  # 0.8 -> positive
    [0, 0, 10, 5],  # 0.5 -> ignored (0.3 <= IoU < 0.7)
    [0, 0, 10, 2],  # 0.2 -> negative
    [50, 50, 60, 60],  # 0.0 -> negative
    [100, 100, 110, 104],  # 0.4 with GT 1, its best anchor -> low-quality positive
    [100, 100, 110, 103],  # 0.3 with GT 1 -> ignored (the interval is [0.3, 0.7))
    [100, 100, 110, 102.9],  # 0.29 -> negative
]


def test_hand_labels_with_low_quality_matches():
    labels, targets = run(HAND_ANCHORS, HAND_GT)
    np.testing.assert_array_equal(labels, [1, 1, -1, 0, 0, 1, -1, 0])
    matched = np.asarray(HAND_GT, np.float32)[[0, 0, 0, 0, 0, 1, 1, 1]]
    expected = np.where((labels == 1)[:, None], encode(matched, HAND_ANCHORS), 0.0)
    np.testing.assert_allclose(targets, expected, rtol=1e-6, atol=1e-6)
    assert targets[5, 3] == pytest.approx(np.log(10 / 4))  # the low-quality match's dh


def test_hand_labels_without_low_quality_matches():
    labels, _ = run(HAND_ANCHORS, HAND_GT, allow_low_quality=False)
    np.testing.assert_array_equal(labels, [1, 1, -1, 0, 0, -1, -1, 0])


def test_low_quality_ties_are_all_positive():
    gt = [[0, 0, 10, 10]]
    anchors = [[0, 0, 10, 4], [0, 6, 10, 10], [0, 0, 10, 3], [40, 40, 50, 50]]  # 0.4, 0.4, 0.3, 0
    labels, targets = run(anchors, gt)
    np.testing.assert_array_equal(labels, [1, 1, -1, 0])
    np.testing.assert_allclose(targets[:2], encode([gt[0]] * 2, anchors[:2]), atol=1e-6)


def test_padded_ground_truth_never_matches():
    # The padded slot holds a box equal to anchor 1; it must not make it positive.
    gt = [[0, 0, 10, 10], [50, 50, 60, 60]]
    labels, targets = run(HAND_ANCHORS, gt, gt_valid=[True, False])
    np.testing.assert_array_equal(labels, [1, 1, -1, 0, 0, 0, 0, 0])
    assert np.all(targets[2:] == 0)


def grid_anchors(n, size=16.0, stride=8.0):
    """n x n square anchors; anchors crossing the (implicit) image border included."""
    c = (np.arange(n) - 1) * stride
    x, y = np.meshgrid(c, c)
    centres = np.stack([x.ravel(), y.ravel()], 1)
    return np.concatenate([centres - size / 2, centres + size / 2], 1).astype(np.float32)


def test_sampled_counts_with_many_positives():
    # Small anchors (negatives) and densely strided GT-sized ones (hundreds of positives).
    gt = [[0, 0, 150, 150], [160, 160, 300, 300]]
    anchors = np.concatenate([grid_anchors(40), grid_anchors(40, size=140.0, stride=2.0)])
    labels, targets = run(anchors, gt)
    num_pos_candidates = int(np.sum(run(anchors, gt, batch_size_per_image=10**5)[0] == 1))
    assert num_pos_candidates > 128
    assert np.sum(labels == 1) == 128
    assert np.sum(labels == 0) == 128
    assert np.sum(labels >= 0) == 256
    assert np.all(targets[labels != 1] == 0)
    assert np.all(np.abs(targets[labels == 1]).sum(1) > 0)


def test_sampled_counts_with_few_positives():
    anchors = grid_anchors(40)
    gt = [[40, 40, 56, 56], [100, 100, 117, 115]]  # anchor-sized: a few positives
    labels, _ = run(anchors, gt)
    full, _ = run(anchors, gt, batch_size_per_image=10**5)
    num_pos = int(np.sum(full == 1))
    assert 0 < num_pos < 128
    assert np.sum(labels == 1) == num_pos
    assert np.sum(labels == 0) == 256 - num_pos
    # Every sampled label agrees with the unsampled assignment.
    sampled = labels >= 0
    np.testing.assert_array_equal(labels[sampled], full[sampled])
    # A different key gives a different sample of negatives, same counts.
    labels2, _ = run(anchors, gt, key=jax.random.key(1))
    assert np.sum(labels2 == 0) == 256 - num_pos and np.any(labels2 != labels)


@pytest.mark.parametrize("num_gt", [0, 3])
def test_no_valid_ground_truth(num_gt):
    anchors = grid_anchors(20)
    gt = np.zeros((num_gt, 4), np.float32)
    labels, targets = run(anchors, gt, gt_valid=np.zeros(num_gt, bool))
    assert np.sum(labels == 0) == 256 and np.sum(labels == 1) == 0
    assert np.all(targets == 0) and np.all(np.isfinite(targets))


def test_jit_once_and_vmap_over_batch(trace_counter):
    anchors = grid_anchors(20)
    gt = np.asarray([[[10, 10, 26, 26], [60, 60, 90, 90], [0, 0, 0, 0]]] * 2, np.float32)
    gt[1, 0] = [100, 20, 117, 37]
    valid = np.asarray([[True, True, False], [True, False, False]])
    keys = jax.random.split(jax.random.key(3), 2)
    batched = trace_counter(jax.vmap(rpn_targets, in_axes=(0, None, 0, 0)))
    labels, targets = batched(keys, anchors, gt, valid)
    assert labels.shape == (2, len(anchors)) and targets.shape == (2, len(anchors), 4)
    for i in range(2):
        one_labels, one_targets = run(anchors, gt[i], valid[i], key=keys[i])
        np.testing.assert_array_equal(labels[i], one_labels)
        np.testing.assert_allclose(targets[i], one_targets, atol=1e-6)
    gt2 = gt + 1.0
    batched(jax.random.split(jax.random.key(4), 2), anchors, gt2, valid)
    assert batched.count == 1


def test_matches_torchvision_assignment():
    g = load_golden("targets_losses")
    for i in range(2):
        # A batch large enough to keep every labelled anchor: labels before sampling.
        labels, targets = run(g["rpn_anchors"], g["gt_boxes"][i], g["gt_valid"][i])
        np.testing.assert_array_equal(labels, g["rpn_labels"][i])
        pos = labels == 1
        np.testing.assert_allclose(targets[pos], g["rpn_box_targets"][i][pos], rtol=1e-5, atol=1e-5)
