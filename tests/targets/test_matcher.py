"""Tests for msrcnn.targets.matcher: detectron2's example, hand cases, padding, numpy reference."""

import jax
import numpy as np
import pytest

from msrcnn.targets.matcher import Matcher, MatchLabel

RPN = Matcher((0.3, 0.7), (0, -1, 1), allow_low_quality_matches=True)
ROI = Matcher((0.5,), (0, 1), allow_low_quality_matches=False)


def reference_match(matcher, quality, gt_valid=None):
    """detectron2's Matcher.__call__, transcribed to numpy, on the valid rows only.

    Includes this project's documented rule that a ground truth whose best quality is <= 0
    adds no low-quality matches.
    """
    quality = np.asarray(quality, np.float32)
    num_gt, num_pred = quality.shape
    rows = np.arange(num_gt) if gt_valid is None else np.flatnonzero(gt_valid)
    if rows.size == 0:
        return np.zeros(num_pred, np.int32), np.full(num_pred, matcher.labels[0], np.int32)
    q = quality[rows]
    matched_vals, matches = q.max(0), q.argmax(0)  # numpy argmax: first index on ties
    labels = np.ones(num_pred, np.int32)
    bounds = [-np.inf, *matcher.thresholds, np.inf]
    for label, low, high in zip(matcher.labels, bounds[:-1], bounds[1:], strict=True):
        labels[(matched_vals >= low) & (matched_vals < high)] = label
    if matcher.allow_low_quality_matches:
        highest = q.max(1)
        _, pred_idx = np.nonzero((q == highest[:, None]) & (highest[:, None] > 0))
        labels[pred_idx] = 1
    return rows[matches].astype(np.int32), labels


def _run(matcher, quality, gt_valid=None):
    matches, labels = jax.jit(matcher)(np.asarray(quality, np.float32), gt_valid)
    assert matches.dtype == np.int32 and labels.dtype == np.int32
    return np.asarray(matches), np.asarray(labels)


def test_detectron2_example():
    # detectron2 tests/modeling/test_matcher.py: RPN thresholds/labels, low-quality matches.
    quality = [[0.15, 0.45, 0.2, 0.6], [0.3, 0.65, 0.05, 0.1], [0.05, 0.4, 0.25, 0.4]]
    matches, labels = _run(RPN, quality)
    np.testing.assert_array_equal(matches, [1, 1, 2, 0])
    np.testing.assert_array_equal(labels, [-1, 1, 0, 1])


def test_intervals_are_half_open():
    quality = np.array([[0.0, 0.2999, 0.3, 0.6999, 0.7, 1.0]], np.float32)
    rpn_no_lq = Matcher((0.3, 0.7), (0, -1, 1))
    _, labels = _run(rpn_no_lq, quality)
    np.testing.assert_array_equal(labels, [0, 0, -1, -1, 1, 1])
    _, labels = _run(ROI, [[0.0, 0.4999, 0.5, 0.9]])
    np.testing.assert_array_equal(labels, [0, 0, 1, 1])
    # Other label layouts, e.g. ignore below the first threshold.
    _, labels = _run(Matcher((0.4, 0.5), (-1, 0, 1)), [[0.1, 0.45, 0.5]])
    np.testing.assert_array_equal(labels, [-1, 0, 1])


def test_argmax_ties_take_the_first_ground_truth():
    quality = [[0.2, 0.8, 0.5], [0.6, 0.8, 0.5], [0.6, 0.1, 0.5]]
    matches, _ = _run(ROI, quality)
    np.testing.assert_array_equal(matches, [1, 0, 0])


def test_low_quality_matches_with_ties():
    # GT 0's best quality 0.4 is shared by predictions 1 and 3: both become positive. Their
    # `matches` stay their own argmax ground truth: prediction 3 overlaps GT 1 more (0.45),
    # so it is matched to GT 1 even though GT 0 made it positive (as detectron2).
    quality = [
        [0.1, 0.4, 0.2, 0.4, 0.0],
        [0.0, 0.1, 0.05, 0.45, 0.9],
    ]
    matches, labels = _run(RPN, quality)
    np.testing.assert_array_equal(labels, [0, 1, 0, 1, 1])
    np.testing.assert_array_equal(matches, [0, 0, 0, 1, 1])
    # Without low-quality matches, 0.4 and 0.45 are in the ignore band.
    _, labels = _run(Matcher((0.3, 0.7), (0, -1, 1)), quality)
    np.testing.assert_array_equal(labels, [0, -1, 0, -1, 1])


def test_ground_truth_with_zero_best_quality_adds_no_matches():
    # GT 1 overlaps nothing. detectron2 would mark every prediction with quality 0 to it
    # (here all of them) positive; this Matcher documents and tests that it adds none.
    quality = [[0.05, 0.5, 0.0], [0.0, 0.0, 0.0]]
    matches, labels = _run(RPN, quality)
    np.testing.assert_array_equal(labels, [0, 1, 0])
    np.testing.assert_array_equal(matches, [0, 0, 0])


def test_padded_ground_truth_rows_never_match():
    # Row 1 is padding with (garbage) high quality; it must influence nothing, including the
    # low-quality step (its max would otherwise make predictions 0 and 2 positive).
    quality = [[0.1, 0.75, 0.2], [0.9, 0.3, 0.9], [0.35, 0.0, 0.1]]
    valid = np.array([True, False, True])
    matches, labels = _run(RPN, quality, valid)
    np.testing.assert_array_equal(matches, [2, 0, 0])
    np.testing.assert_array_equal(labels, [1, 1, 0])
    # Same as matching against the valid rows alone (indices mapped back).
    m_sub, l_sub = _run(RPN, np.asarray(quality)[valid])
    np.testing.assert_array_equal(np.flatnonzero(valid)[m_sub], matches)
    np.testing.assert_array_equal(l_sub, labels)


@pytest.mark.parametrize("matcher", [RPN, ROI, Matcher((0.4, 0.5), (-1, 0, 1))])
def test_no_ground_truth(matcher):
    # No rows at all, and only padding rows: every prediction gets labels[0], matches 0.
    matches, labels = _run(matcher, np.zeros((0, 6), np.float32))
    np.testing.assert_array_equal(matches, 0)
    np.testing.assert_array_equal(labels, matcher.labels[0])
    quality = np.random.default_rng(0).uniform(0, 1, (3, 6))
    matches, labels = _run(matcher, quality, np.zeros(3, bool))
    np.testing.assert_array_equal(matches, 0)
    np.testing.assert_array_equal(labels, matcher.labels[0])


def test_matches_numpy_reference_on_random_inputs():
    rng = np.random.default_rng(0)
    matchers = [RPN, ROI, Matcher((0.3, 0.7), (0, -1, 1)), Matcher((0.4, 0.5), (-1, 0, 1), True)]
    jitted = {m: jax.jit(m) for m in matchers}
    for trial in range(40):
        num_gt, num_pred = 7, 50
        # Coarse values make ties (within and across rows) and exact thresholds frequent.
        quality = (rng.integers(0, 11, (num_gt, num_pred)) / 10.0).astype(np.float32)
        quality[rng.uniform(size=quality.shape) < 0.5] = 0.0
        if trial % 5 == 0:
            quality[rng.integers(num_gt)] = 0.0  # a ground truth overlapping nothing
        valid = rng.uniform(size=num_gt) < 0.7
        if trial % 10 == 3:
            valid[:] = False
        for matcher in matchers:
            got = jax.tree.map(np.asarray, jitted[matcher](quality, valid))
            want = reference_match(matcher, quality, valid)
            np.testing.assert_array_equal(got[1], want[1], err_msg=f"{trial} {matcher}")
            np.testing.assert_array_equal(got[0], want[0], err_msg=f"{trial} {matcher}")
        # gt_valid=None means all rows valid.
        got = jax.tree.map(np.asarray, jitted[RPN](quality))
        want = reference_match(RPN, quality)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_vmap_and_trace_count(trace_counter):
    rng = np.random.default_rng(1)
    quality = rng.uniform(0, 1, (3, 5, 40)).astype(np.float32)
    valid = rng.uniform(size=(3, 5)) < 0.6
    batched = jax.jit(jax.vmap(RPN))(quality, valid)
    for i in range(3):
        want = reference_match(RPN, quality[i], valid[i])
        np.testing.assert_array_equal(np.asarray(batched[0][i]), want[0])
        np.testing.assert_array_equal(np.asarray(batched[1][i]), want[1])

    tc = trace_counter(RPN)
    for i in range(3):
        tc(quality[i], valid[i])
    assert tc.count == 1


def test_config_validation_and_labels():
    assert Matcher([0.3, 0.7], [0, -1, 1]) == RPN.__class__((0.3, 0.7), (0, -1, 1))
    hash(RPN)  # usable as a static jit argument
    assert [MatchLabel.IGNORE, MatchLabel.NEGATIVE, MatchLabel.POSITIVE] == [-1, 0, 1]
    with pytest.raises(ValueError):
        Matcher((0.0, 0.5), (0, -1, 1))
    with pytest.raises(ValueError):
        Matcher((0.7, 0.3), (0, -1, 1))
    with pytest.raises(ValueError):
        Matcher((0.3, 0.7), (0, 1))
    with pytest.raises(ValueError):
        Matcher((0.5,), (0, 2))
