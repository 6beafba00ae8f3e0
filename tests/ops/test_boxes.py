"""Tests for msrcnn.ops.boxes: hand cases, round trips, torchvision goldens, edge cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msrcnn.ops import boxes as B
from tests.conftest import load_golden

GOLDEN = load_golden("boxes")
RPN_CODER = B.BoxCoder((1.0, 1.0, 1.0, 1.0))
ROI_CODER = B.BoxCoder((10.0, 10.0, 5.0, 5.0))


def test_conversions_hand_case():
    xyxy = np.array([[10.0, 20.0, 30.0, 60.0]])
    np.testing.assert_allclose(B.xyxy_to_cxcywh(xyxy), [[20.0, 40.0, 20.0, 40.0]])
    np.testing.assert_allclose(B.xyxy_to_xywh(xyxy), [[10.0, 20.0, 20.0, 40.0]])
    np.testing.assert_allclose(B.box_area(xyxy), [800.0])


def test_conversions_round_trip():
    boxes = GOLDEN["a"]
    np.testing.assert_allclose(B.cxcywh_to_xyxy(B.xyxy_to_cxcywh(boxes)), boxes, atol=1e-4)
    np.testing.assert_allclose(B.xywh_to_xyxy(B.xyxy_to_xywh(boxes)), boxes, atol=1e-4)


def test_area_of_degenerate_boxes_is_zero():
    np.testing.assert_array_equal(B.box_area(GOLDEN["b"][:3]), [0.0, 0.0, 0.0])


def test_iou_hand_case():
    a = np.array([[0.0, 0.0, 10.0, 10.0]])
    b = np.array([[5.0, 5.0, 15.0, 15.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    np.testing.assert_allclose(B.pairwise_iou(a, b), [[25.0 / 175.0, 1.0, 0.0]], rtol=1e-6)


def test_iou_matches_torchvision():
    iou = B.pairwise_iou(GOLDEN["a"], GOLDEN["b"][3:])
    np.testing.assert_allclose(iou, GOLDEN["iou"], atol=1e-6)


def test_iou_of_padding_is_zero_not_nan():
    pad = np.zeros((3, 4), np.float32)
    iou = B.pairwise_iou(pad, np.concatenate([pad, GOLDEN["a"][:2]]))
    assert np.isfinite(iou).all() and (np.asarray(iou) == 0).all()
    grad = jax.grad(lambda x: B.pairwise_iou(x, x).sum())(jnp.asarray(pad))
    assert np.isfinite(grad).all()


def test_clip_matches_torchvision():
    np.testing.assert_allclose(B.clip_boxes(GOLDEN["a"], (600, 700)), GOLDEN["clipped"])


def test_clip_with_per_image_sizes():
    boxes = np.array([[[-5.0, -5.0, 50.0, 50.0]], [[-5.0, -5.0, 50.0, 50.0]]])
    sizes = jnp.array([[20.0, 30.0], [100.0, 40.0]])  # (H, W) per image
    np.testing.assert_allclose(B.clip_boxes(boxes, sizes), [[[0, 0, 30, 20]], [[0, 0, 40, 50]]])


def test_remove_small_boxes_mask():
    boxes = np.array([[0, 0, 1e-4, 10], [0, 0, 1, 1], [0, 0, 5, 0.5]], np.float32)
    np.testing.assert_array_equal(B.remove_small_boxes_mask(boxes, 1e-3), [False, True, True])


@pytest.mark.parametrize("coder,name", [(RPN_CODER, "w1"), (ROI_CODER, "w10")])
def test_box_coder_matches_torchvision(coder, name):
    enc = coder.encode(GOLDEN["targets"], GOLDEN["proposals"])
    np.testing.assert_allclose(enc, GOLDEN[f"encoded_{name}"], rtol=1e-5, atol=1e-5)
    dec = coder.decode(GOLDEN["deltas"], GOLDEN["proposals"])
    np.testing.assert_allclose(dec, GOLDEN[f"decoded_{name}"], rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("coder", [RPN_CODER, ROI_CODER])
def test_box_coder_round_trip(coder):
    targets, proposals = GOLDEN["targets"], GOLDEN["proposals"]
    decoded = coder.decode(coder.encode(targets, proposals), proposals)
    np.testing.assert_allclose(decoded, targets, atol=1e-3)


def test_box_coder_clamps_size_deltas():
    ref = np.array([[0.0, 0.0, 16.0, 16.0]])
    huge = RPN_CODER.decode(np.array([[0.0, 0.0, 50.0, 50.0]]), ref)
    # exp(log(1000/16)) * 16 = 1000 pixels, centred on the reference box.
    np.testing.assert_allclose(huge, [[8 - 500.0, 8 - 500.0, 8 + 500.0, 8 + 500.0]], rtol=1e-5)
    assert B.DEFAULT_SCALE_CLAMP == pytest.approx(math.log(1000 / 16))


def test_box_coder_broadcasts_class_specific_deltas():
    ref = GOLDEN["proposals"][:5]  # [R, 4]
    deltas = np.random.default_rng(1).normal(size=(5, 3, 4)).astype(np.float32)  # [R, K, 4]
    per_class = ROI_CODER.decode(deltas, ref[:, None, :])
    assert per_class.shape == (5, 3, 4)
    np.testing.assert_allclose(per_class[:, 1], ROI_CODER.decode(deltas[:, 1], ref), atol=1e-5)


def test_box_coder_traces_once(trace_counter):
    tc = trace_counter(ROI_CODER.decode)
    for shift in range(3):
        tc(GOLDEN["deltas"] + shift, GOLDEN["proposals"])
    assert tc.count == 1
    tc(GOLDEN["deltas"][:10], GOLDEN["proposals"][:10])
    assert tc.count == 2


def test_float32_geometry_from_bf16_inputs():
    out = RPN_CODER.decode(jnp.asarray(GOLDEN["deltas"], jnp.bfloat16), GOLDEN["proposals"])
    assert out.dtype == jnp.float32
    assert B.pairwise_iou(jnp.asarray(GOLDEN["a"], jnp.bfloat16), GOLDEN["a"]).dtype == jnp.float32
