"""Balanced positive / negative sampling of labelled anchors or proposals, with static shapes.

Semantics of torchvision's `BalancedPositiveNegativeSampler` and detectron2's
`subsample_labels`: of `num_samples`, at most `int(num_samples * positive_fraction)` are
positives; the rest are negatives (as many as exist); each group is chosen uniformly at random
without replacement. Randomness comes only from the explicit `key`.

Implementation: one sort orders the elements as (positives, negatives, ignored), each group in
uniformly random order (random 32-bit keys); the samples are then the first `num_pos` entries of
the positive block and the first `num_neg` entries of the negative block. A random order of the
whole set restricted to a group is a uniform random order of that group, so one sort serves both
groups. Ties between two equal random keys (probability ~N^2 / 2^33) are the only departure
from exact uniformity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["sample_indices", "subsample_labels"]


def _quotas(labels, num_samples, positive_fraction):
    """Number of elements per group and how many of each are sampled ([] int32 each)."""
    is_pos = labels > 0
    is_neg = labels == 0
    total_pos = jnp.sum(is_pos, dtype=jnp.int32)
    total_neg = jnp.sum(is_neg, dtype=jnp.int32)
    # Python int(), as torchvision and detectron2 (truncation, e.g. int(512 * 0.25) = 128).
    max_pos = int(num_samples * positive_fraction)
    num_pos = jnp.minimum(total_pos, max_pos)
    num_neg = jnp.minimum(total_neg, num_samples - num_pos)
    return is_pos, is_neg, total_pos, num_pos, num_neg


def _random_group_order(key, is_pos, is_neg):
    """Indices sorted by group (positive, negative, ignored), uniformly shuffled within groups."""
    group = jnp.where(is_pos, 0, jnp.where(is_neg, 1, 2)).astype(jnp.int32)
    priority = jax.random.bits(key, is_pos.shape, jnp.uint32)
    index = jnp.arange(is_pos.shape[0], dtype=jnp.int32)
    _, _, order = jax.lax.sort((group, priority, index), num_keys=2, is_stable=False)
    return order


def sample_indices(key, labels, num_samples, positive_fraction):
    """Samples a balanced set of positives and negatives as a fixed-size list of indices.

    Args:
      key: PRNG key.
      labels: [N] int: 1 (or any value > 0) positive, 0 negative, -1 (any value < 0) ignore.
      num_samples: static int, samples per set (e.g. 256 anchors, 512 proposals).
      positive_fraction: static float, the largest fraction of positives.

    Returns:
      indices: [num_samples] int32 indices into `labels`: the sampled positives first, then the
        sampled negatives, then padding (index 0).
      is_positive: [num_samples] bool, True for the positive slots.
      valid: [num_samples] bool, False for padding (when positives plus negatives run short).
    """
    labels = jnp.asarray(labels)
    n = labels.shape[0]
    is_pos, is_neg, total_pos, num_pos, num_neg = _quotas(labels, num_samples, positive_fraction)
    if n == 0:
        zeros = jnp.zeros((num_samples,), jnp.int32)
        return zeros, zeros.astype(bool), zeros.astype(bool)
    order = _random_group_order(key, is_pos, is_neg)

    slot = jnp.arange(num_samples, dtype=jnp.int32)
    is_positive = slot < num_pos
    valid = slot < num_pos + num_neg
    # Positive slots read the positive block from its start, negative slots the negative block
    # (which starts at `total_pos`, after all positives, sampled or not).
    position = jnp.where(is_positive, slot, total_pos + slot - num_pos)
    position = jnp.clip(position, 0, n - 1)  # padding slots may point past the end
    indices = jnp.where(valid, order[position], 0)
    return indices, is_positive, valid


def subsample_labels(key, labels, num_samples, positive_fraction):
    """Samples a balanced set of positives and negatives as masks over the input.

    Args:
      key: PRNG key.
      labels: [N] int: 1 (or any value > 0) positive, 0 negative, -1 (any value < 0) ignore.
      num_samples: static int, the total number of samples.
      positive_fraction: static float, the largest fraction of positives.

    Returns:
      (sampled_pos, sampled_neg): [N] bool each; the same selection as `sample_indices` with
      the same key. `sampled_pos.sum() == min(#pos, int(num_samples * positive_fraction))` and
      `sampled_neg.sum() == min(#neg, num_samples - sampled_pos.sum())`.
    """
    labels = jnp.asarray(labels)
    indices, is_positive, valid = sample_indices(key, labels, num_samples, positive_fraction)
    n = labels.shape[0]
    # Scatter-max, not set: padding slots all point at index 0 and must not erase a real
    # sample there (duplicate indices in a scatter-set have no defined winner).
    sampled_pos = jnp.zeros((n,), bool).at[indices].max(is_positive & valid)
    sampled_neg = jnp.zeros((n,), bool).at[indices].max(~is_positive & valid)
    return sampled_pos, sampled_neg
