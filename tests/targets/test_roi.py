"""Tests for msrcnn.targets.roi: proposal sampling (hand cases, counts, padding, empty ground
truth, jit / vmap, torchvision golden), mask targets from box crops, MaskIoU targets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msrcnn.ops.roi_align import roi_align
from msrcnn.targets.roi import (
    RoiSample,
    mask_targets,
    maskiou_targets,
    max_positives,
    sample_rois,
    select_class_masks,
)
from tests.conftest import load_golden

KEY = jax.random.key(0)

_sample_rois = jax.jit(
    sample_rois,
    static_argnames=("num_samples", "positive_fraction", "fg_iou_threshold", "bg_iou_threshold"),
)
_mask_targets = jax.jit(mask_targets, static_argnames=("size", "sampling_ratio"))


def encode(gt, boxes, weights=(10.0, 10.0, 5.0, 5.0)):
    """R-CNN deltas in float64 numpy."""
    gt, boxes = np.asarray(gt, np.float64), np.asarray(boxes, np.float64)
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    bx, by = boxes[:, 0] + 0.5 * bw, boxes[:, 1] + 0.5 * bh
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    gx, gy = gt[:, 0] + 0.5 * gw, gt[:, 1] + 0.5 * gh
    wx, wy, ww, wh = weights
    return np.stack(
        [wx * (gx - bx) / bw, wy * (gy - by) / bh, ww * np.log(gw / bw), wh * np.log(gh / bh)], 1
    )


def run(proposals, proposal_valid, gt_boxes, gt_classes, gt_valid, key=KEY, **kwargs):
    s = _sample_rois(
        key,
        np.asarray(proposals, np.float32).reshape(-1, 4),
        np.asarray(proposal_valid, bool),
        np.asarray(gt_boxes, np.float32).reshape(-1, 4),
        np.asarray(gt_classes, np.int32),
        np.asarray(gt_valid, bool),
        **kwargs,
    )
    assert isinstance(s, RoiSample)
    return jax.tree.map(np.asarray, s)


GT = [[10, 10, 50, 40], [60, 20, 90, 80], [0, 0, 0, 0]]
GT_CLASSES = [2, 5, 0]
GT_VALID = [True, True, False]


def test_gt_boxes_are_appended_and_match_themselves():
    # All proposals are padding (one overlapping a GT exactly): only the 2 valid GT remain.
    proposals = [[10, 10, 50, 40], [0, 0, 5, 5]]
    s = run(proposals, [False, False], GT, GT_CLASSES, GT_VALID, num_samples=8)
    np.testing.assert_array_equal(s.valid, [1, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(s.is_positive, s.valid)
    order = np.argsort(s.source_index[:2])
    np.testing.assert_array_equal(s.source_index[:2][order], [2, 3])  # P + m
    np.testing.assert_array_equal(s.rois[:2][order], np.asarray(GT[:2], np.float32))
    np.testing.assert_array_equal(s.classes[:2][order], [2, 5])
    np.testing.assert_array_equal(s.matched_gt[:2][order], [0, 1])
    np.testing.assert_array_equal(s.iou[:2], [1.0, 1.0])
    assert np.all(s.box_targets == 0)
    # Padding slots: zero boxes, background, no targets.
    assert np.all(s.rois[2:] == 0) and np.all(s.classes[2:] == 0)


def test_hand_labels_classes_and_box_targets():
    proposals = [
        [10, 10, 50, 36],  # IoU 0.867 with GT 0 -> class 2
        [10, 10, 30, 40],  # IoU 0.5 with GT 0 -> class 2 (>= 0.5)
        [10, 10, 29, 40],  # IoU 0.475 -> background
        [60, 20, 90, 70],  # IoU 0.833 with GT 1 -> class 5
        [200, 200, 220, 220],  # IoU 0 -> background
    ]
    s = run(proposals, [True] * 5, GT, GT_CLASSES, GT_VALID, num_samples=32)
    valid = s.valid
    assert valid.sum() == 7  # 5 proposals + 2 GT
    src = s.source_index[valid]
    by_source = dict(zip(src.tolist(), range(valid.sum()), strict=True))
    expected_class = {0: 2, 1: 2, 2: 0, 3: 5, 4: 0, 5: 2, 6: 5}
    for source, cls in expected_class.items():
        slot = by_source[source]
        assert s.classes[slot] == cls, source
        assert s.is_positive[slot] == (cls > 0)
    # Positives first.
    num_pos = int(s.is_positive.sum())
    assert num_pos == 5 and np.all(s.is_positive[:num_pos])
    for source, gt_index in [(0, 0), (1, 0), (3, 1)]:
        slot = by_source[source]
        assert s.matched_gt[slot] == gt_index
        expected = encode([GT[gt_index]], [proposals[source]])[0]
        np.testing.assert_allclose(s.box_targets[slot], expected, rtol=1e-5, atol=1e-5)
    for source in (2, 4):
        assert np.all(s.box_targets[by_source[source]] == 0)
    np.testing.assert_allclose(s.iou[by_source[1]], 0.5)


def test_bg_iou_threshold_ignores_between():
    proposals = [[10, 10, 29, 40], [200, 200, 220, 220]]  # IoU 0.475 and 0
    s = run(proposals, [True] * 2, GT, GT_CLASSES, GT_VALID, num_samples=8, bg_iou_threshold=0.1)
    assert 0 not in s.source_index[s.valid]  # ignored
    assert 1 in s.source_index[s.valid & ~s.is_positive]


def jittered(rng, box, n, scale):
    box = np.asarray(box, np.float32)
    w, h = box[2] - box[0], box[3] - box[1]
    out = box + rng.normal(0, scale, (n, 4)) * np.array([w, h, w, h])
    out[:, 2:] = np.maximum(out[:, 2:], out[:, :2] + 1)
    return out.astype(np.float32)


def random_far_boxes(rng, n):
    xy = rng.uniform(150, 400, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(5, 40, (n, 2))], 1).astype(np.float32)


def test_sampled_counts_with_enough_positives():
    rng = np.random.default_rng(0)
    proposals = np.concatenate([jittered(rng, GT[0], 300, 0.03), random_far_boxes(rng, 700)])
    s = run(proposals, np.ones(1000, bool), GT, GT_CLASSES, GT_VALID)
    assert s.rois.shape == (512, 4)
    assert s.is_positive.sum() == 128 == max_positives(512, 0.25)
    assert np.all(s.is_positive[:128]) and np.all(s.valid)
    assert np.all(s.classes[:128] > 0) and np.all(s.classes[128:] == 0)


def test_sampled_counts_with_few_positives_and_padding():
    rng = np.random.default_rng(1)
    proposals = np.concatenate([jittered(rng, GT[1], 10, 0.02), random_far_boxes(rng, 990)])
    valid = np.ones(1000, bool)
    valid[5:10] = False  # five of the near boxes are padding
    valid[600:] = False
    s = run(proposals, valid, GT, GT_CLASSES, GT_VALID)
    # 5 valid near proposals (IoU >= 0.5 at this jitter) + 2 GT boxes.
    assert s.is_positive.sum() == 7
    assert (s.valid & ~s.is_positive).sum() == 512 - 7
    assert np.all(valid[s.source_index[s.valid & (s.source_index < 1000)]])


@pytest.mark.parametrize("num_gt", [0, 3])
def test_no_valid_ground_truth(num_gt):
    rng = np.random.default_rng(2)
    proposals = random_far_boxes(rng, 50)
    s = run(
        proposals,
        np.ones(50, bool),
        np.zeros((num_gt, 4)),
        np.zeros(num_gt),
        np.zeros(num_gt, bool),
        num_samples=64,
    )
    assert s.valid.sum() == 50 and s.is_positive.sum() == 0
    assert np.all(s.classes == 0) and np.all(s.box_targets == 0)
    assert np.all(np.isfinite(s.box_targets)) and np.all(s.iou == 0)


def test_jit_once_and_vmap_over_batch(trace_counter):
    rng = np.random.default_rng(3)
    proposals = np.stack(
        [np.concatenate([jittered(rng, GT[i], 20, 0.1), random_far_boxes(rng, 20)]) for i in (0, 1)]
    )
    pvalid = np.ones((2, 40), bool)
    gt = np.asarray([GT, GT], np.float32)
    classes = np.asarray([GT_CLASSES, GT_CLASSES], np.int32)
    gvalid = np.asarray([GT_VALID, [True, False, False]])
    keys = jax.random.split(jax.random.key(5), 2)
    fn = trace_counter(jax.vmap(lambda *a: sample_rois(*a, num_samples=64)))
    batched = jax.tree.map(np.asarray, fn(keys, proposals, pvalid, gt, classes, gvalid))
    assert batched.rois.shape == (2, 64, 4) and batched.classes.shape == (2, 64)
    assert batched["rois"] is batched.rois  # dict-style access too
    for i in range(2):
        one = run(
            proposals[i], pvalid[i], gt[i], classes[i], gvalid[i], key=keys[i], num_samples=64
        )
        for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(one), strict=True):
            np.testing.assert_allclose(a[i], b, atol=1e-6)
    fn(keys, proposals + 1.0, pvalid, gt, classes, gvalid)
    assert fn.count == 1


def test_matches_torchvision_select_training_samples():
    g = load_golden("targets_losses")
    for i in range(2):
        s = run(
            g["roi_proposals"][i],
            np.ones(40, bool),
            g["gt_boxes"][i],
            g["gt_classes"][i],
            g["gt_valid"][i],
            num_samples=512,
        )
        count = g["roi_count"][i]
        # torchvision keeps candidate order and drops the padded GT rows; we keep P + M
        # candidate indices: map its GT rows (P + m, m < #valid) to ours (the same).
        assert s.valid.sum() == count
        order = np.argsort(s.source_index[s.valid])

        def pick(x, s=s, order=order):
            return x[s.valid][order]

        np.testing.assert_allclose(pick(s.rois), g["roi_sampled_boxes"][i][:count])
        np.testing.assert_array_equal(pick(s.classes), g["roi_labels"][i][:count])
        pos = pick(s.is_positive)
        np.testing.assert_array_equal(
            pick(s.matched_gt)[pos], g["roi_matched_idxs"][i][:count][pos]
        )
        np.testing.assert_allclose(
            pick(s.box_targets)[pos], g["roi_box_targets"][i][:count][pos], rtol=1e-4, atol=1e-4
        )


# ---- mask targets


def block_mean(x, by, bx):
    h, w = x.shape
    return x.reshape(h // by, by, w // bx, bx).mean((1, 3))


def random_crops(rng, m, s):
    """Smooth-ish random crops in 0..255 (uint8), as the data layer ships them."""
    base = rng.random((m, s // 8, s // 8))
    return (np.kron(base, np.ones((8, 8))) * 255).astype(np.uint8)


def test_roi_equal_to_gt_box_reproduces_the_crop():
    rng = np.random.default_rng(4)
    crops = random_crops(rng, 2, 112)
    gt = np.asarray([[10.0, 20.0, 66.0, 48.0], [3.5, 7.25, 40.5, 90.0]], np.float32)
    targets, ratio = _mask_targets(crops, gt, gt, np.array([0, 1]), size=28)
    # 112 / 28 = 4 crop pixels per bin; 2 samples per bin at 1 and 3 read pixel pairs
    # (0, 1) and (2, 3) half and half: each bin is the mean of its 4 x 4 block.
    for m in range(2):
        expected = block_mean(crops[m] / 255.0, 4, 4)
        np.testing.assert_allclose(targets[m], expected, atol=1e-5)
    np.testing.assert_allclose(ratio, [1.0, 1.0], atol=1e-6)


def test_roi_covering_the_left_half():
    rng = np.random.default_rng(5)
    crops = random_crops(rng, 1, 112)
    gt = np.asarray([[10.0, 20.0, 66.0, 48.0]], np.float32)
    left = np.asarray([[10.0, 20.0, 38.0, 48.0]], np.float32)
    targets, ratio = _mask_targets(crops, gt, left, np.array([0]), size=28)
    crop = crops[0] / 255.0
    # x: 56 crop pixels over 28 bins, samples at pixel centres; y: 4 x 4 as above.
    np.testing.assert_allclose(targets[0], block_mean(crop[:, :56], 4, 2), atol=1e-5)
    np.testing.assert_allclose(ratio[0], crop[:, :56].sum() / crop.sum(), rtol=1e-5)


def test_mask_targets_equal_roi_align_over_zero_padded_crop():
    rng = np.random.default_rng(6)
    s = 32
    crops = random_crops(rng, 3, s)
    gt = np.asarray([[10, 20, 50, 40], [5, 5, 25, 45], [30, 0, 31.5, 70]], np.float32)
    rois = np.asarray(
        [
            [10, 20, 50, 40],
            [0, 10, 40, 60],
            [20, 25, 30, 30],
            [-5, -5, 80, 80],
            [12, 30, 35, 38],
            [100, 100, 120, 130],
            [29, 10, 33, 20],
        ],
        np.float32,
    )
    matched = np.array([0, 1, 0, 0, 1, 1, 2])
    targets, ratio = _mask_targets(crops, gt, rois, matched, size=28, sampling_ratio=2)
    pad = 2
    for r, m in enumerate(matched):
        crop = np.pad(crops[m] / 255.0, pad).astype(np.float32)
        sx = s / (gt[m, 2] - gt[m, 0])
        sy = s / (gt[m, 3] - gt[m, 1])
        box = [
            (rois[r, 0] - gt[m, 0]) * sx + pad,
            (rois[r, 1] - gt[m, 1]) * sy + pad,
            (rois[r, 2] - gt[m, 0]) * sx + pad,
            (rois[r, 3] - gt[m, 1]) * sy + pad,
        ]
        expected = roi_align(crop[:, :, None], np.asarray([box], np.float32), 28, 1.0, 2, True)
        np.testing.assert_allclose(targets[r], expected[0, :, :, 0], atol=1e-5)
    assert np.all(targets[5] == 0) and ratio[5] == 0  # RoI outside the GT box
    assert np.all((ratio >= 0) & (ratio <= 1))


def test_mask_targets_degenerate_and_empty():
    crops = np.zeros((2, 16, 16), np.uint8)
    crops[1] = 255
    gt = np.asarray([[0, 0, 0, 0], [5, 5, 5, 20]], np.float32)  # padding, zero width
    rois = np.asarray([[0, 0, 10, 10], [5, 5, 10, 20]], np.float32)
    targets, ratio = _mask_targets(crops, gt, rois, np.array([0, 1]), size=28)
    assert np.all(targets == 0) and np.all(ratio == 0)
    # No ground truth at all (M = 0).
    targets, ratio = _mask_targets(
        np.zeros((0, 16, 16), np.uint8), np.zeros((0, 4)), rois, np.array([0, 0]), size=28
    )
    assert targets.shape == (2, 28, 28) and np.all(targets == 0) and np.all(ratio == 0)


def test_select_class_masks():
    logits = np.arange(2 * 3 * 4 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 4, 5)
    classes = np.array([[1, 5, 0], [3, 2, 4]])
    out = select_class_masks(logits, classes)
    assert out.shape == (2, 3, 4, 4)
    for b in range(2):
        for r in range(3):
            np.testing.assert_array_equal(out[b, r], logits[b, r, :, :, max(classes[b, r] - 1, 0)])


# ---- MaskIoU targets


def test_maskiou_target_hand_computed():
    target = np.zeros((1, 28, 28), np.float32)
    target[0, :, :14] = 1.0  # the RoI sees 392 pixels: half of the object (ratio 0.5)
    logits = np.full((1, 28, 28), -3.0, np.float32)
    logits[0, :, :21] = 2.0  # predicted 588 pixels, 392 of them on the object
    iou = maskiou_targets(logits, target, np.array([0.5]))
    # I = 392, full = 392 / 0.5 = 784, union = 588 + 784 - 392 = 980.
    np.testing.assert_allclose(iou, [392 / 980], rtol=1e-6)
    # Threshold conventions: logit > 0 (DESIGN), target >= 0.5.
    logits[0, :, :21] = 0.0
    assert maskiou_targets(logits, target, np.array([0.5]))[0] == 0.0
    target[0, :, :14] = 0.5
    logits[0, :, :21] = 0.1
    np.testing.assert_allclose(maskiou_targets(logits, target, np.array([0.5])), [0.4])
    assert maskiou_targets(logits, target, np.array([0.5]), pred_threshold=0.5)[0] == 0.0


def test_maskiou_target_of_a_truncating_box_end_to_end():
    # Object = the whole GT box [0, 40] x [0, 20]; the RoI is its left half.
    crops = np.full((1, 112, 112), 255, np.uint8)
    gt = np.asarray([[0.0, 0.0, 40.0, 20.0]], np.float32)
    roi = np.asarray([[0.0, 0.0, 20.0, 20.0]], np.float32)
    targets, ratio = _mask_targets(crops, gt, roi, np.array([0]), size=28)
    np.testing.assert_allclose(ratio, [0.5], rtol=1e-6)
    assert np.all(targets >= 0.5)
    logits = np.full((1, 28, 28), 5.0, np.float32)  # predicts the whole RoI
    # True IoU of the predicted half with the whole object: 0.5.
    np.testing.assert_allclose(maskiou_targets(logits, targets, ratio), [0.5], rtol=1e-6)
    # A prediction covering only the left half of the RoI: I = 392, union = 1568 -> 0.25.
    logits[0, :, 14:] = -5.0
    np.testing.assert_allclose(maskiou_targets(logits, targets, ratio), [0.25], rtol=1e-6)


def test_maskiou_target_edge_cases_and_no_gradient():
    zeros = np.zeros((3, 28, 28), np.float32)
    target = zeros.copy()
    target[1, :4, :4] = 1.0
    logits = np.where(np.arange(3)[:, None, None] == 2, 1.0, -1.0) * np.ones((3, 28, 28))
    ratio = np.array([0.0, 0.0, 1.0])  # ratio 0: clamped at 1e-10
    iou = maskiou_targets(logits, target, ratio)
    assert np.all(np.isfinite(iou))
    np.testing.assert_allclose(iou, [0.0, 0.0, 0.0])  # empty pred / huge full / empty target
    grad = jax.grad(lambda x: maskiou_targets(x, target, ratio).sum())(jnp.asarray(logits))
    assert np.all(grad == 0)
