"""Matching predictions (anchors, proposals) to ground truth by a quality matrix such as IoU.

detectron2's `Matcher` with static shapes: padded ground-truth rows are masked instead of
removed, and the data-dependent `nonzero` of the low-quality step becomes a boolean reduction.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools

import jax.numpy as jnp

__all__ = ["MatchLabel", "Matcher"]


class MatchLabel(enum.IntEnum):
    """Per-prediction match labels."""

    IGNORE = -1
    NEGATIVE = 0
    POSITIVE = 1


@dataclasses.dataclass(frozen=True)
class Matcher:
    """Assigns each prediction its best ground truth and a label from the match quality.

    detectron2 `Matcher` semantics: the best quality of each prediction over the ground truths
    falls in one of the intervals [-inf, t0), [t0, t1), ..., [t_last, inf), which get
    `labels[0]`, `labels[1]`, ... in that order. E.g. the RPN's thresholds (0.3, 0.7) and
    labels (0, -1, 1): IoU < 0.3 negative, 0.3 <= IoU < 0.7 ignored, IoU >= 0.7 positive.

    With `allow_low_quality_matches` (Faster R-CNN's RPN rule (i)), for every ground truth the
    predictions of highest quality with it, ties included, are labelled positive whatever their
    interval. Their `matches` entry stays the argmax ground truth of the prediction, as in
    detectron2 (it can differ from the ground truth that made the prediction positive when the
    prediction overlaps another ground truth more).

    One deliberate departure: a ground truth whose highest quality is <= 0 (a degenerate box,
    or one no prediction overlaps) adds no low-quality matches. detectron2 would label *every*
    prediction of quality 0 with it positive (its `==` against a maximum of 0); detectron2
    only avoids that because its data loader drops empty boxes first.

    Attributes:
      thresholds: increasing interval boundaries (all > 0, as detectron2 asserts).
      labels: one label per interval, len(thresholds) + 1 values from {-1, 0, 1}.
      allow_low_quality_matches: add the low-quality positives described above.
    """

    thresholds: tuple[float, ...] = (0.3, 0.7)
    labels: tuple[int, ...] = (0, -1, 1)
    allow_low_quality_matches: bool = False

    def __post_init__(self):
        thresholds = tuple(float(t) for t in self.thresholds)
        labels = tuple(int(label) for label in self.labels)
        if not thresholds or thresholds[0] <= 0:
            raise ValueError(f"thresholds must be non-empty and positive, got {thresholds}")
        if any(lo > hi for lo, hi in itertools.pairwise(thresholds)):
            raise ValueError(f"thresholds must be increasing, got {thresholds}")
        if len(labels) != len(thresholds) + 1:
            raise ValueError(f"need len(thresholds) + 1 labels, got {labels} for {thresholds}")
        if any(label not in (-1, 0, 1) for label in labels):
            raise ValueError(f"labels must be in {{-1, 0, 1}}, got {labels}")
        # Normalised tuples keep the dataclass hashable and equal across list/tuple inputs.
        object.__setattr__(self, "thresholds", thresholds)
        object.__setattr__(self, "labels", labels)

    def __call__(self, quality, gt_valid=None):
        """Matches N predictions against M (possibly padded) ground truths.

        Args:
          quality: [M, N] float match quality (e.g. IoU) of M ground truths x N predictions;
            values of valid rows are expected >= 0, as detectron2 asserts.
          gt_valid: optional [M] bool; False rows are padding and never match anything.

        Returns:
          matches: [N] int32 index of the best (valid) ground truth of each prediction; the
            first one on ties; 0 when there is no valid ground truth.
          match_labels: [N] int32 labels (see `MatchLabel`); all `labels[0]` (normally
            negative) when there is no valid ground truth.
        """
        quality = jnp.asarray(quality, jnp.float32)
        num_gt, num_pred = quality.shape
        if num_gt == 0:
            return (
                jnp.zeros((num_pred,), jnp.int32),
                jnp.full((num_pred,), self.labels[0], jnp.int32),
            )
        if gt_valid is None:
            gt_valid = jnp.ones((num_gt,), bool)
        gt_valid = jnp.asarray(gt_valid, bool)
        # Padded rows get -inf, so they lose every max; with no valid row at all, the best
        # value is -inf, which lands in the first interval [-inf, t0) -> labels[0].
        masked = jnp.where(gt_valid[:, None], quality, -jnp.inf)
        matched_vals = jnp.max(masked, axis=0)  # [N]
        matches = jnp.argmax(masked, axis=0).astype(jnp.int32)  # first index on ties

        # Interval index = number of thresholds <= value; the intervals are half-open
        # [low, high) as detectron2's `(vals >= low) & (vals < high)`.
        thresholds = jnp.asarray(self.thresholds, jnp.float32)
        interval = jnp.sum(matched_vals[:, None] >= thresholds[None, :], axis=1)
        match_labels = jnp.asarray(self.labels, jnp.int32)[interval]

        if self.allow_low_quality_matches:
            highest = jnp.max(masked, axis=1)  # [M] best quality of each ground truth
            gt_counts = gt_valid & (highest > 0)
            is_best = (masked == highest[:, None]) & gt_counts[:, None]  # [M, N], ties kept
            match_labels = jnp.where(jnp.any(is_best, axis=0), 1, match_labels)
        return matches, match_labels.astype(jnp.int32)
