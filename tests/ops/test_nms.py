"""Tests for msrcnn.ops.nms: torchvision goldens, a numpy reference, hand cases, edge cases."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msrcnn.ops import nms as nms_lib
from msrcnn.ops.nms import batched_nms, multiclass_nms, nms
from tests.conftest import load_golden

# Shared jitted entry points: every (shape, static args) combination compiles once per session.
nms_jit = jax.jit(nms, static_argnames=("iou_threshold", "max_output_size"))
batched_jit = jax.jit(batched_nms, static_argnames=("iou_threshold", "max_output_size"))
# score_threshold works traced too; leaving it dynamic saves a compilation per threshold.
multiclass_jit = jax.jit(
    multiclass_nms, static_argnames=("iou_threshold", "max_output_size", "pre_nms_top_k")
)


@functools.cache
def golden():
    return load_golden("nms")


# ---------------------------------------------------------------------------------------------
# Reference implementation, written from the definition.


def reference_nms(boxes, scores, iou_threshold, valid=None, class_ids=None):
    """Plain greedy NMS in numpy; returns the kept indices in visiting order.

    Visiting order: descending score, equal scores by ascending index; NaN scores and invalid
    boxes are skipped. IoU is computed in float32 as inter / (area_i + area_j - inter) with areas
    of degenerate boxes clamped to 0 and an empty union giving IoU 0; the test `IoU > threshold`
    is done exactly (in float64 against the Python threshold).
    """
    boxes = np.asarray(boxes, np.float32)
    scores = np.asarray(scores, np.float32)
    n = len(scores)
    ok = ~np.isnan(scores)
    if valid is not None:
        ok &= np.asarray(valid, bool)
    cls = np.zeros(n, np.int64) if class_ids is None else np.asarray(class_ids, np.int64)
    idx = np.nonzero(ok)[0]
    order = idx[np.lexsort((idx, -scores[idx].astype(np.float64)))]
    wh = np.maximum(boxes[:, 2:] - boxes[:, :2], np.float32(0))
    area = wh[:, 0] * wh[:, 1]
    kept = []
    for i in order:
        if kept:
            k = np.asarray(kept)
            tl = np.maximum(boxes[k, :2], boxes[i, :2])
            br = np.minimum(boxes[k, 2:], boxes[i, 2:])
            iwh = np.maximum(br - tl, np.float32(0))
            inter = iwh[:, 0] * iwh[:, 1]
            union = area[k] + area[i] - inter
            with np.errstate(invalid="ignore", divide="ignore"):
                iou = np.where(union > 0, inter / union, np.float32(0)).astype(np.float32)
            if np.any((iou.astype(np.float64) > iou_threshold) & (cls[k] == cls[i])):
                continue
        kept.append(int(i))
    return np.asarray(kept, np.int64)


def kept_of(indices, valid):
    """Compacts an (indices, valid) pair and checks the padding convention."""
    indices, valid = np.asarray(indices), np.asarray(valid)
    count = int(valid.sum())
    assert valid[:count].all(), "valid slots must form a prefix"
    assert (indices[count:] == 0).all(), "padding slots must hold index 0"
    return indices[:count]


SMALL = 8


def small_nms(boxes, scores, thr, valid=None, class_ids=None):
    """nms / batched_nms on a few boxes, padded to SMALL invalid slots to share compilations."""
    n = len(scores)
    pad = SMALL - n
    boxes = np.pad(np.asarray(boxes, np.float32), ((0, pad), (0, 0)))
    scores = np.pad(np.asarray(scores, np.float32), (0, pad))
    valid = np.pad(np.ones(n, bool) if valid is None else np.asarray(valid, bool), (0, pad))
    if class_ids is None:
        return nms_jit(boxes, scores, iou_threshold=thr, max_output_size=SMALL, valid=valid)
    class_ids = np.pad(np.asarray(class_ids, np.int32), (0, pad))
    return batched_jit(
        boxes, scores, class_ids, iou_threshold=thr, max_output_size=SMALL, valid=valid
    )


def small_multiclass(boxes, scores):
    """multiclass_nms on at most 4 RoIs x 2 classes, zero-padded (scores below threshold)."""
    r, k = scores.shape
    boxes = np.pad(np.asarray(boxes, np.float32), ((0, 4 - r), (0, 2 - k), (0, 0)))
    scores = np.pad(np.asarray(scores, np.float32), ((0, 4 - r), (0, 2 - k)))
    # pre_nms_top_k < 8 candidates exercises the top-k preselection.
    out = multiclass_jit(
        boxes,
        scores,
        iou_threshold=0.5,
        max_output_size=4,
        score_threshold=0.05,
        pre_nms_top_k=6,
    )
    return tuple(map(np.asarray, out))


def random_boxes(rng, n, size=200.0):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(1, size / 3, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Goldens from torchvision.


@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("name", ["random", "clustered"])
def test_nms_matches_torchvision(name, thr):
    g = golden()
    boxes, scores = g[f"{name}_boxes"], g[f"{name}_scores"]
    expected = g[f"{name}_keep_{int(thr * 10)}"]
    got = kept_of(*nms_jit(boxes, scores, iou_threshold=thr, max_output_size=len(scores)))
    np.testing.assert_array_equal(got, expected)


def test_nms_rpn_budget_is_prefix_of_torchvision():
    # RPN setting: 2000 -> 1000 at 0.7; the early exit must not change the first 1000.
    g = golden()
    got = nms_jit(g["random_boxes"], g["random_scores"], iou_threshold=0.7, max_output_size=1000)
    np.testing.assert_array_equal(kept_of(*got), g["random_keep_7"][:1000])


def test_reference_matches_torchvision():
    g = golden()
    for name in ("random", "clustered"):
        ref = reference_nms(g[f"{name}_boxes"], g[f"{name}_scores"], 0.5)
        np.testing.assert_array_equal(ref, g[f"{name}_keep_5"])


def pad_to(n, *arrays):
    """Zero-pads arrays along axis 0 to length n (the padding is marked invalid by the caller)."""
    return [np.pad(a, [(0, n - len(a))] + [(0, 0)] * (a.ndim - 1)) for a in arrays]


# Mid-size tests run at N = 800 (three full tiles and a partial one), IoU 0.5 and
# max_output_size = N, so they share the compilations of the batched golden below.
MID = 800


def test_equal_scores_match_torchvision_stable_order():
    g = golden()
    n = len(g["ties_scores"])
    boxes, scores = pad_to(MID, g["ties_boxes"], g["ties_scores"])
    valid = np.arange(MID) < n
    got = nms_jit(boxes, scores, iou_threshold=0.5, max_output_size=MID, valid=valid)
    np.testing.assert_array_equal(kept_of(*got), g["ties_keep_5"])
    np.testing.assert_array_equal(
        g["ties_keep_5"], reference_nms(g["ties_boxes"], g["ties_scores"], 0.5)
    )


@pytest.mark.parametrize("thr", [0.5, 0.7])
def test_batched_nms_matches_torchvision(thr):
    g = golden()
    boxes, scores, labels = g["batched_boxes"], g["batched_scores"], g["batched_labels"]
    got = batched_jit(boxes, scores, labels, iou_threshold=thr, max_output_size=len(scores))
    np.testing.assert_array_equal(kept_of(*got), g[f"batched_keep_{int(thr * 10)}"])


@pytest.mark.parametrize(
    ("key", "score_thr", "top_k"),
    [
        # The default budget exceeds the 3000 (r, k) pairs: no preselection at all.
        ("mc_keep_full", 0.05, nms_lib.DEFAULT_PRE_NMS_TOP_K),
        # 400 of the 1322 candidates already hold 100 survivors: the cut changes nothing.
        ("mc_keep_full", 0.05, 400),
        ("mc_keep_sparse", 0.6, nms_lib.DEFAULT_PRE_NMS_TOP_K),
    ],
)
def test_multiclass_nms_matches_torchvision_postprocess(key, score_thr, top_k):
    g = golden()
    boxes, scores = g["mc_boxes"], g["mc_scores"]
    num_classes = scores.shape[1]
    r, k, s, v = multiclass_jit(
        boxes,
        scores,
        iou_threshold=0.5,
        max_output_size=100,
        score_threshold=score_thr,
        pre_nms_top_k=top_k,
    )
    r, k, s, v = map(np.asarray, (r, k, s, v))
    expected = g[key]
    count = len(expected)
    np.testing.assert_array_equal(v, np.arange(100) < count)
    np.testing.assert_array_equal(r[:count] * num_classes + k[:count], expected)
    np.testing.assert_array_equal(s[:count], scores.reshape(-1)[expected])
    assert (r[count:] == 0).all() and (k[count:] == 0).all() and (s[count:] == 0).all()


def test_multiclass_top_k_cut_too_early_gives_a_prefix():
    # With only 50 candidates fewer than 100 survive: the output is a prefix of the exact one.
    g = golden()
    r, k, _, v = multiclass_jit(
        g["mc_boxes"],
        g["mc_scores"],
        iou_threshold=0.5,
        max_output_size=100,
        score_threshold=0.05,
        pre_nms_top_k=50,
    )
    count = int(np.asarray(v).sum())
    assert 0 < count < 100
    flat = np.asarray(r)[:count] * g["mc_scores"].shape[1] + np.asarray(k)[:count]
    np.testing.assert_array_equal(flat, g["mc_keep_full"][:count])


# ---------------------------------------------------------------------------------------------
# Hand-computed cases.

# A: [0,10]x[0,10]. B shifted by 3: IoU(A,B) = 70/130 = 0.538. C shifted by 6: IoU(A,C) =
# 40/160 = 0.25, IoU(B,C) = 0.538. D far away.
CHAIN = np.array([[0, 0, 10, 10], [3, 0, 13, 10], [6, 0, 16, 10], [50, 50, 60, 60]], np.float32)
CHAIN_SCORES = np.array([0.9, 0.8, 0.7, 0.1], np.float32)


@pytest.mark.parametrize(
    ("thr", "expected"),
    [
        (0.7, [0, 1, 2, 3]),  # nothing overlaps enough
        (0.5, [0, 2, 3]),  # A removes B; C survives because its suppressor B is gone
        (0.2, [0, 3]),  # A removes B and C
    ],
)
def test_hand_chain(thr, expected):
    got = kept_of(*small_nms(CHAIN, CHAIN_SCORES, thr))
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(reference_nms(CHAIN, CHAIN_SCORES, thr), expected)


def test_hand_score_order_and_padding():
    # Scores reversed: C first, it removes B (0.538 > 0.5); A survives (IoU(A,C) = 0.25).
    scores = np.array([0.2, 0.5, 0.9, 0.05], np.float32)
    idx, valid = small_nms(CHAIN, scores, 0.5)
    np.testing.assert_array_equal(np.asarray(idx), [2, 0, 3, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(np.asarray(valid), np.arange(SMALL) < 3)


def test_iou_equal_to_threshold_is_not_suppressed():
    # IoU([0,10]^2, [0,10]x[0,20]) = 100 / 200 = 0.5 exactly: strict ">" keeps both.
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 20]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    np.testing.assert_array_equal(kept_of(*small_nms(boxes, scores, 0.5)), [0, 1])
    np.testing.assert_array_equal(kept_of(*small_nms(boxes, scores, 0.2)), [0])


def test_threshold_rounds_down_to_float32():
    # torchvision compares the float32 IoU with the threshold in double precision.
    for thr in (0.3, 0.5, 0.7, 0.95, 1.0 / 3.0):
        t32 = nms_lib._threshold_f32(thr)
        assert t32.dtype == np.float32 and float(t32) <= thr
        assert float(np.nextafter(t32, np.float32(np.inf))) > thr


def test_batched_hand_case():
    # Two identical boxes of different classes both survive; same class suppresses.
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    classes = np.array([0, 1, 0, 1], np.int32)
    got = kept_of(*small_nms(boxes, scores, 0.5, class_ids=classes))
    np.testing.assert_array_equal(got, [0, 1])


def test_multiclass_hand_case():
    # RoI 0 and 1 overlap heavily; class 0 keeps only RoI 1 (higher score), class 1 keeps both
    # since its RoI-1 box is moved away; scores below the threshold never appear.
    boxes = np.zeros((2, 2, 4), np.float32)
    boxes[0, 0] = boxes[0, 1] = [0, 0, 10, 10]
    boxes[1, 0] = [1, 0, 11, 10]
    boxes[1, 1] = [40, 40, 50, 50]
    scores = np.array([[0.6, 0.3], [0.7, 0.04]], np.float32)
    r, k, s, v = small_multiclass(boxes, scores)
    np.testing.assert_array_equal(np.asarray(v), [True, True, False, False])
    np.testing.assert_array_equal(np.asarray(r), [1, 0, 0, 0])
    np.testing.assert_array_equal(np.asarray(k), [0, 1, 0, 0])
    np.testing.assert_allclose(np.asarray(s), [0.7, 0.3, 0, 0])


# ---------------------------------------------------------------------------------------------
# Against the numpy reference: masks, classes, a size that is not a multiple of the tile.


def test_matches_reference_with_masks_and_classes():
    rng = np.random.default_rng(3)
    boxes = random_boxes(rng, MID)
    scores = rng.integers(0, 50, MID).astype(np.float32) / 50  # many ties
    valid = rng.uniform(size=MID) < 0.8
    classes = rng.integers(0, 3, MID).astype(np.int32)
    got = nms_jit(boxes, scores, iou_threshold=0.5, max_output_size=MID, valid=valid)
    np.testing.assert_array_equal(kept_of(*got), reference_nms(boxes, scores, 0.5, valid=valid))
    got = batched_jit(boxes, scores, classes, iou_threshold=0.5, max_output_size=MID, valid=valid)
    expected = reference_nms(boxes, scores, 0.5, valid=valid, class_ids=classes)
    np.testing.assert_array_equal(kept_of(*got), expected)


# ---------------------------------------------------------------------------------------------
# Edge cases.


def test_empty_input():
    idx, valid = nms(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), 0.5, 3)
    assert idx.shape == (3,) and idx.dtype == jnp.int32 and not np.asarray(valid).any()
    r, k, s, v = multiclass_nms(np.zeros((0, 5, 4)), np.zeros((0, 5)), 0.5, 3)
    assert r.shape == k.shape == s.shape == v.shape == (3,) and not np.asarray(v).any()


def test_all_padding_input():
    boxes = random_boxes(np.random.default_rng(0), 7)
    idx, valid = small_nms(boxes, np.ones(7), 0.5, valid=np.zeros(7, bool))
    assert not np.asarray(valid).any() and (np.asarray(idx) == 0).all()
    classes = np.zeros(7, np.int32)
    idx, valid = small_nms(boxes, np.ones(7), 0.5, valid=np.zeros(7, bool), class_ids=classes)
    assert not np.asarray(valid).any() and (np.asarray(idx) == 0).all()


def test_max_output_size_larger_than_input():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float32)
    idx, valid = small_nms(boxes, np.array([0.5, 0.9, 0.7], np.float32), 0.5)
    np.testing.assert_array_equal(np.asarray(idx), [1, 2, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(np.asarray(valid), np.arange(SMALL) < 2)


def test_degenerate_boxes():
    # Zero-area boxes have IoU 0 with everything, so they are kept and suppress nothing,
    # including identical degenerate copies; an inverted box counts as area 0.
    boxes = np.array(
        [[5, 5, 5, 30], [5, 5, 5, 30], [0, 0, 0, 0], [0, 0, 40, 40], [30, 30, 20, 20]], np.float32
    )
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5], np.float32)
    got = kept_of(*small_nms(boxes, scores, 0.2))
    np.testing.assert_array_equal(got, [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(reference_nms(boxes, scores, 0.2), got)


def test_nan_scores_are_invalid():
    # Box 0 has a NaN score: it is not kept and does not suppress its twin, box 1.
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 1, 10, 11], [50, 0, 60, 10]], np.float32)
    scores = np.array([np.nan, 0.5, 0.4, np.nan], np.float32)
    np.testing.assert_array_equal(kept_of(*small_nms(boxes, scores, 0.5)), [1])
    # In multiclass_nms a NaN score never passes the score threshold.
    r, _, _, v = small_multiclass(boxes[:, None], scores[:, None])
    np.testing.assert_array_equal(np.asarray(v), [True, False, False, False])
    assert int(r[0]) == 1


def test_equal_scores_lower_index_first():
    # Identical boxes, identical scores: the lowest index wins, and the output order of equal
    # scores is by index. 0.0 and -0.0 tie too.
    boxes = np.array([[0, 0, 10, 10]] * 3 + [[20, 20, 30, 30]] * 2, np.float32)
    scores = np.array([0.5, 0.5, 0.5, 0.0, -0.0], np.float32)
    got = kept_of(*small_nms(boxes, scores, 0.5))
    np.testing.assert_array_equal(got, [0, 3])
    got = kept_of(*small_nms(boxes[::-1], scores[::-1], 0.5))
    np.testing.assert_array_equal(got, [2, 0])
    # Same in multiclass_nms (flat index r * K + k breaks the tie).
    mb = np.broadcast_to(boxes[:3, None], (3, 2, 4))
    r, k, _, v = small_multiclass(mb, np.full((3, 2), 0.5, np.float32))
    np.testing.assert_array_equal(np.asarray(v), [True, True, False, False])
    np.testing.assert_array_equal(np.asarray(r)[:2], [0, 0])
    np.testing.assert_array_equal(np.asarray(k)[:2], [0, 1])


# ---------------------------------------------------------------------------------------------
# Tracing and batching.


def test_trace_count(trace_counter):
    # max_output_size > N here, so padding after the last survivor is checked too.
    tc = trace_counter(nms, static_argnames=("iou_threshold", "max_output_size"))
    rng = np.random.default_rng(1)
    for _ in range(3):
        boxes = random_boxes(rng, 40)
        scores = rng.uniform(size=40).astype(np.float32)
        valid = rng.uniform(size=40) < 0.9
        idx, v = tc(boxes, scores, iou_threshold=0.5, max_output_size=64, valid=valid)
        assert idx.shape == v.shape == (64,)
        np.testing.assert_array_equal(kept_of(idx, v), reference_nms(boxes, scores, 0.5, valid))
    assert tc.count == 1

    mc = trace_counter(multiclass_nms, static_argnames=("iou_threshold", "max_output_size"))
    for _ in range(2):
        mc(rng.uniform(0, 50, (20, 3, 4)).astype(np.float32), rng.uniform(size=(20, 3)), 0.5, 10)
    assert mc.count == 1


def test_reverse_mode_gradient_through_gathered_boxes():
    # Callers gather boxes with the kept indices and differentiate the result: the selection is
    # constant, the gathered boxes get gradient 1 where kept, 0 elsewhere.
    def loss(boxes):
        idx, valid = nms(boxes, CHAIN_SCORES, 0.5, 4)
        return jnp.sum(jnp.where(valid[:, None], boxes[idx], 0.0))

    grad = np.asarray(jax.jit(jax.grad(loss))(CHAIN))
    np.testing.assert_array_equal(grad, np.array([1, 0, 1, 1], np.float32)[:, None] * np.ones(4))


def test_vmap_matches_per_image():
    # Per-image calls use the shared MID compilations; the reference checks both.
    rng = np.random.default_rng(7)
    batch = 3
    boxes = np.stack([random_boxes(rng, MID) for _ in range(batch)])
    scores = rng.uniform(size=(batch, MID)).astype(np.float32)
    valid = rng.uniform(size=(batch, MID)) < np.array([[1.0], [0.5], [0.0]])  # incl. all padding
    classes = rng.integers(0, 4, (batch, MID)).astype(np.int32)

    vmapped = jax.jit(jax.vmap(lambda b, s, v: nms(b, s, 0.5, MID, valid=v)))
    idx, val = vmapped(boxes, scores, valid)
    vbatched = jax.jit(jax.vmap(lambda b, s, c, v: batched_nms(b, s, c, 0.5, MID, valid=v)))
    bidx, bval = vbatched(boxes, scores, classes, valid)
    for i in range(batch):
        single = nms_jit(
            boxes[i], scores[i], iou_threshold=0.5, max_output_size=MID, valid=valid[i]
        )
        np.testing.assert_array_equal(np.asarray(idx[i]), np.asarray(single[0]))
        np.testing.assert_array_equal(np.asarray(val[i]), np.asarray(single[1]))
        expected = reference_nms(boxes[i], scores[i], 0.5, valid[i])
        np.testing.assert_array_equal(kept_of(idx[i], val[i]), expected)

        single = batched_jit(
            boxes[i], scores[i], classes[i], iou_threshold=0.5, max_output_size=MID, valid=valid[i]
        )
        np.testing.assert_array_equal(np.asarray(bidx[i]), np.asarray(single[0]))
        np.testing.assert_array_equal(np.asarray(bval[i]), np.asarray(single[1]))
        expected = reference_nms(boxes[i], scores[i], 0.5, valid[i], class_ids=classes[i])
        np.testing.assert_array_equal(kept_of(bidx[i], bval[i]), expected)
    assert not np.asarray(val[2]).any() and not np.asarray(bval[2]).any()

    g = golden()
    mc_boxes = np.stack([g["mc_boxes"], g["mc_boxes"][::-1]])
    mc_scores = np.stack([g["mc_scores"], g["mc_scores"][::-1]])
    out = jax.jit(jax.vmap(lambda b, s: multiclass_nms(b, s, 0.5, 100)))(mc_boxes, mc_scores)
    for i in range(2):
        single = multiclass_jit(
            mc_boxes[i],
            mc_scores[i],
            iou_threshold=0.5,
            max_output_size=100,
            score_threshold=0.05,
            pre_nms_top_k=nms_lib.DEFAULT_PRE_NMS_TOP_K,
        )
        for a, b in zip(out, single, strict=True):
            np.testing.assert_array_equal(np.asarray(a[i]), np.asarray(b))
