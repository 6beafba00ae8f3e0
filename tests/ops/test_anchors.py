"""Tests for msrcnn.ops.anchors against torchvision's AnchorGenerator and by hand."""

import hashlib

import numpy as np

from msrcnn.ops import anchors as A
from tests.conftest import load_golden

GOLDEN = load_golden("anchors")


def test_cell_anchors_hand_case():
    # Ratio 1, size 32: a 32x32 box centred on 0. Ratio 0.5 (h / w): w = 32 / sqrt(0.5) = 45.25,
    # h = 22.63; halves 22.63 and 11.31 round to 23 and 11.
    cell = A.cell_anchors([32], [0.5, 1.0, 2.0])
    np.testing.assert_array_equal(
        cell, [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]]
    )


def test_grid_sizes_follow_ceil_halving():
    sizes = A.fpn_grid_sizes((800, 1216), range(2, 7))
    np.testing.assert_array_equal(sizes, GOLDEN["grids"])
    assert A.fpn_grid_sizes((33, 65), [2]) == [(9, 17)]


def test_anchors_identical_to_torchvision_800x1216():
    image_hw = tuple(int(v) for v in GOLDEN["image_hw"])
    per_level = A.fpn_anchors(image_hw)
    for level, anchors in zip(range(2, 7), per_level, strict=True):
        assert anchors.dtype == np.float32
        assert len(anchors) == int(GOLDEN[f"count_p{level}"])
        rows = GOLDEN[f"rows_p{level}"]
        np.testing.assert_array_equal(anchors[rows], GOLDEN[f"anchors_p{level}"])
        digest = hashlib.sha256(np.ascontiguousarray(anchors).tobytes()).digest()
        assert digest == GOLDEN[f"sha256_p{level}"].tobytes(), f"P{level} anchors differ"


def test_p6_stride_is_integer_division_like_torchvision():
    # 800 / 13 cells -> stride 61, not 64: the last row of P6 anchors is centred at 12 * 61.
    p6 = A.fpn_anchors((800, 1216))[-1].reshape(13, 19, 3, 4)
    centre_y = (p6[-1, 0, 1, 1] + p6[-1, 0, 1, 3]) / 2
    assert centre_y == 12 * 61


def test_order_is_location_major_then_ratio():
    anchors = A.fpn_anchors((64, 64), levels=[2], sizes=[32]).pop().reshape(16, 16, 3, 4)
    # Same cell -> same centre for all three ratios; next column moves x by the stride 4.
    centres = (anchors[..., :2] + anchors[..., 2:]) / 2
    np.testing.assert_array_equal(centres[0, 1, 0] - centres[0, 0, 0], [4, 0])
    np.testing.assert_array_equal(centres[1, 0, 2] - centres[0, 0, 2], [0, 4])
    np.testing.assert_array_equal(anchors[0, 0], A.cell_anchors([32], A.FPN_ASPECT_RATIOS))
