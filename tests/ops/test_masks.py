"""Tests for msrcnn.ops.masks: torchvision goldens, hand cases, edge cases, trace counts."""

import jax
import numpy as np
import pycocotools.mask as mask_util
import pytest

from msrcnn.ops import masks as M
from tests.conftest import load_golden

GOLDEN = load_golden("masks")

paste = jax.jit(M.paste_masks_in_image, static_argnames=("image_hw", "padding", "threshold"))
crop = jax.jit(M.crop_and_resize_masks, static_argnames=("size", "sampling_ratio"))
mask_iou = jax.jit(M.mask_iou)


def _golden_paste(tag):
    hw = tuple(int(v) for v in GOLDEN[f"paste_{tag}_hw"])
    return (
        GOLDEN[f"paste_{tag}_probs"],
        GOLDEN[f"paste_{tag}_boxes"],
        hw,
        GOLDEN[f"paste_{tag}_out"],
    )


@pytest.mark.parametrize("tag", ["a", "b"])
def test_paste_matches_torchvision(tag):
    probs, boxes, hw, expected = _golden_paste(tag)
    out = np.asarray(paste(probs, boxes, image_hw=hw))
    assert out.shape == expected.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)
    # Binary masks agree pixel for pixel, except (at most a handful of) pixels whose
    # probability is within float rounding of the threshold.
    binary = np.asarray(paste(probs, boxes, image_hw=hw, threshold=0.5))
    assert binary.dtype == np.bool_
    differ = binary != (expected >= 0.5)
    assert differ.sum() <= 3
    assert np.all(np.abs(expected[differ] - 0.5) < 1e-5)


def test_paste_per_box_support_matches_torchvision():
    # The footprint of each pasted mask is exactly torchvision's (catches off-by-one box
    # arithmetic that a value tolerance could hide next to the zero-padded border). The golden
    # probabilities are all > 0, so torchvision's footprint is where its output is > 0; an
    # all-ones mask pasted here must cover exactly that.
    for tag in ["a", "b"]:
        probs, boxes, hw, expected = _golden_paste(tag)
        assert probs.min() > 0
        out = np.asarray(paste(np.ones_like(probs), boxes, image_hw=hw))
        np.testing.assert_array_equal(out > 0, expected > 0)


def test_paste_border_cases_are_present():
    # The golden boxes really cross every border of the image (guards the fixture itself).
    _, boxes, (h, w), expected = _golden_paste("a")
    assert (boxes[:, 0] < 0).any() and (boxes[:, 1] < 0).any()
    assert (boxes[:, 2] > w).any() and (boxes[:, 3] > h).any()
    # Masks crossing the borders paste something on the first/last rows and columns.
    assert expected[:, 0, :].any() and expected[:, -1, :].any()
    assert expected[:, :, 0].any() and expected[:, :, -1].any()


def test_paste_hand_case_constant_mask():
    # A constant mask in the integer box [10, 10, 38, 38] with S = 28. By hand: the box is
    # scaled by 30 / 28 about its centre to [9, 9, 39, 39], so the 30 x 30 zero-padded mask
    # is resized to 31 x 31 pixels at 9..39 (ratio 30 / 31). Pixel 9 samples source 0 (the
    # zero pad); pixel 10 samples (1.5 * 30 / 31 - 0.5) = 0.9516 between pad and mask;
    # pixels 11..37 read the mask only; 38 mirrors 10 and 39 reads pad again.
    probs = np.ones((1, 28, 28), np.float32)
    boxes = np.array([[10.0, 10.0, 38.0, 38.0]], np.float32)
    out = np.asarray(paste(probs, boxes, image_hw=(50, 50)))[0]
    edge = 1.5 * 30 / 31 - 0.5
    profile = np.zeros(50)
    profile[10:39] = 1.0
    profile[[10, 38]] = edge
    # float32 source coordinates: ~3e-6 off the exact rationals at the far edge.
    np.testing.assert_allclose(out, profile[:, None] * profile[None, :], atol=1e-5, rtol=0)
    assert out[:10].max() == 0 and out[39:].max() == 0
    assert out[:, :10].max() == 0 and out[:, 39:].max() == 0


def test_paste_box_outside_image_is_empty():
    # torchvision fails on such boxes (its slice end wraps around); here they paste nothing.
    probs = np.ones((3, 28, 28), np.float32)
    boxes = np.array(
        [[-40.0, 5.0, -20.0, 20.0], [5.0, 60.0, 20.0, 80.0], [100.0, 100.0, 120.0, 130.0]],
        np.float32,
    )
    out = np.asarray(paste(probs, boxes, image_hw=(50, 60)))
    assert out.shape == (3, 50, 60) and out.max() == 0


def test_paste_padding_other_than_one():
    # padding=0: no zero ring, box scale 1; torchvision allows it. A constant mask pastes 1
    # exactly on the integer box (w = x2 - x1 + 1 pixels).
    probs = np.ones((1, 28, 28), np.float32)
    boxes = np.array([[3.0, 4.0, 10.0, 12.0]], np.float32)
    out = np.asarray(paste(probs, boxes, image_hw=(20, 20), padding=0))[0]
    expected = np.zeros((20, 20), np.float32)
    expected[4:13, 3:11] = 1.0
    np.testing.assert_array_equal(out, expected)


def test_paste_empty_and_trace_count(trace_counter):
    tc = trace_counter(M.paste_masks_in_image, static_argnames=("image_hw", "threshold"))
    probs, boxes, hw, _ = _golden_paste("a")
    for _ in range(3):
        tc(probs, boxes, image_hw=hw)
    tc(probs + 0.1, boxes + 1.0, image_hw=hw)
    assert tc.count == 1
    out = tc(probs[:0], boxes[:0], image_hw=hw)
    assert out.shape == (0, *hw) and tc.count == 2


def test_crop_and_resize_matches_torchvision_roi_align():
    masks, boxes = GOLDEN["crop_masks"], GOLDEN["crop_boxes"]
    for ratio in (1, 2, 3):
        out = np.asarray(crop(masks, boxes, size=28, sampling_ratio=ratio))
        assert out.shape == (len(masks), 28, 28) and out.dtype == np.float32
        np.testing.assert_allclose(out, GOLDEN[f"crop_out_sr{ratio}"], atol=1e-5, rtol=0)
    # uint8 and float inputs give the same result as bool.
    for dtype in (np.uint8, np.float32):
        out = np.asarray(crop(masks.astype(dtype), boxes, size=28, sampling_ratio=2))
        np.testing.assert_allclose(out, GOLDEN["crop_out_sr2"], atol=1e-5, rtol=0)


def test_crop_and_resize_hand_case_filled_box_gives_ones():
    # Box exactly on a filled 56 x 84 rectangle: with 28 bins each bin is 2 x 3 pixels and,
    # aligned (-0.5 px shift), 2 samples per bin land exactly on pixel centres of the
    # rectangle, so every output is exactly 1; an adjacent empty box gives exactly 0.
    masks = np.zeros((2, 100, 120), bool)
    masks[:, 10:66, 20:104] = True
    boxes = np.array([[20.0, 10.0, 104.0, 66.0], [0.0, 70.0, 30.0, 100.0]], np.float32)
    out = np.asarray(crop(masks, boxes, size=28, sampling_ratio=2))
    np.testing.assert_array_equal(out[0], 1.0)
    np.testing.assert_array_equal(out[1], 0.0)


def test_crop_and_resize_trace_count(trace_counter):
    tc = trace_counter(M.crop_and_resize_masks, static_argnames=("size", "sampling_ratio"))
    masks, boxes = GOLDEN["crop_masks"], GOLDEN["crop_boxes"]
    tc(masks, boxes, size=28)
    tc(~masks, boxes + 1.0, size=28)
    assert tc.count == 1


def _random_masks(rng, n, h, w):
    """Blobby binary masks (thresholded smoothed noise) plus an empty and a full mask."""
    noise = rng.normal(size=(n, h // 4 + 1, w // 4 + 1))
    up = np.repeat(np.repeat(noise, 4, axis=1), 4, axis=2)[:, :h, :w]
    masks = up > rng.uniform(0.3, 1.5, (n, 1, 1))
    masks[0] = False
    masks[1] = True
    return masks


def test_mask_iou_matches_numpy_and_pycocotools():
    rng = np.random.default_rng(0)
    a = _random_masks(rng, 7, 33, 45)
    b = np.concatenate([_random_masks(rng, 5, 33, 45), a[2:4]])
    out = np.asarray(mask_iou(a, b))
    assert out.shape == (7, 7) and out.dtype == np.float32

    fa, fb = a.reshape(7, -1), b.reshape(7, -1)
    inter = (fa[:, None] & fb[None]).sum(-1)
    union = (fa[:, None] | fb[None]).sum(-1)
    expected = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=0)

    rle = lambda m: mask_util.encode(np.asfortranarray(m.transpose(1, 2, 0).astype(np.uint8)))
    coco = mask_util.iou(rle(a), rle(b), [0] * len(b))
    np.testing.assert_allclose(out, coco, rtol=1e-6, atol=1e-7)
    # Identical masks have IoU 1; two empty masks 0 (not NaN).
    np.testing.assert_array_equal(np.diag(out[2:4, 5:7]), 1.0)
    empty = np.zeros((2, 33, 45), bool)
    np.testing.assert_array_equal(np.asarray(mask_iou(empty, empty)), 0.0)


def test_mask_iou_dtypes_and_trace_count(trace_counter):
    rng = np.random.default_rng(1)
    a, b = _random_masks(rng, 4, 16, 20), _random_masks(rng, 3, 16, 20)
    ref = np.asarray(mask_iou(a, b))
    np.testing.assert_allclose(np.asarray(mask_iou(a.astype(np.uint8), b.astype(np.float32))), ref)
    tc = trace_counter(M.mask_iou)
    tc(a, b)
    tc(b[:3].repeat(2, 0)[:4], a[:3])
    assert tc.count == 1
