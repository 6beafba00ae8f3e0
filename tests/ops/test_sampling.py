"""Tests for msrcnn.ops.sampling: exact counts, ignore labels, keys, uniformity, vmap, traces."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msrcnn.ops import sampling as S

STATIC = ("num_samples", "positive_fraction")
subsample = jax.jit(S.subsample_labels, static_argnames=STATIC)
sample = jax.jit(S.sample_indices, static_argnames=STATIC)


@functools.partial(jax.jit, static_argnames=STATIC)
def _both(key, labels, num_samples, positive_fraction):
    # One compilation for both functions keeps the parametrized cases fast.
    return (
        S.subsample_labels(key, labels, num_samples, positive_fraction),
        S.sample_indices(key, labels, num_samples, positive_fraction),
    )


def _labels(num_pos, num_neg, num_ignore, seed=0):
    labels = np.array([1] * num_pos + [0] * num_neg + [-1] * num_ignore, np.int32)
    return np.random.default_rng(seed).permutation(labels)


@pytest.mark.parametrize(
    ("counts", "num_samples", "fraction", "expected"),
    [
        # Plenty of both: the positive quota and the rest negatives.
        ((200, 400, 50), 256, 0.5, (128, 128)),
        # int() truncation of the quota, as torchvision: int(10 * 0.25) = 2.
        ((20, 40, 0), 10, 0.25, (2, 8)),
        # Fewer positives than the quota: negatives fill up the rest.
        ((5, 400, 30), 64, 0.25, (5, 59)),
        # Fewer of both: everything is sampled, the rest is padding.
        ((3, 7, 20), 32, 0.5, (3, 7)),
        # No positives / no negatives / nothing usable.
        ((0, 50, 5), 16, 0.5, (0, 16)),
        ((50, 0, 5), 16, 0.5, (8, 0)),
        ((0, 0, 9), 16, 0.5, (0, 0)),
        # Fewer elements than samples.
        ((2, 3, 1), 16, 0.25, (2, 3)),
    ],
)
def test_exact_counts(counts, num_samples, fraction, expected):
    labels = _labels(*counts)
    key = jax.random.key(1)
    (pos, neg), (idx, is_pos, valid) = jax.tree.map(
        np.asarray, _both(key, labels, num_samples, fraction)
    )
    assert (pos.sum(), neg.sum()) == expected
    # Only positives / negatives are sampled, never both, never an ignored element.
    assert np.all(labels[pos] == 1) and np.all(labels[neg] == 0)
    assert not np.any(pos & neg)

    assert idx.shape == is_pos.shape == valid.shape == (num_samples,)
    assert idx.dtype == np.int32
    num_pos, num_neg = expected
    # Layout: positives, then negatives, then padding (index 0, invalid).
    np.testing.assert_array_equal(is_pos, np.arange(num_samples) < num_pos)
    np.testing.assert_array_equal(valid, np.arange(num_samples) < num_pos + num_neg)
    np.testing.assert_array_equal(idx[~valid], 0)
    assert np.all(labels[idx[:num_pos]] == 1)
    assert np.all(labels[idx[num_pos : num_pos + num_neg]] == 0)
    assert len(set(idx[valid].tolist())) == num_pos + num_neg  # without replacement
    # Same selection as the masks of subsample_labels with the same key.
    np.testing.assert_array_equal(np.flatnonzero(pos), np.sort(idx[:num_pos]))
    np.testing.assert_array_equal(np.flatnonzero(neg), np.sort(idx[num_pos : num_pos + num_neg]))


def test_other_positive_and_ignore_values():
    # Any label > 0 counts as positive, any label < 0 is ignored (detectron2 uses -1 only).
    labels = np.array([2, 0, -2, 1, -1, 0, 3], np.int32)
    pos, neg = map(np.asarray, subsample(jax.random.key(0), labels, 8, 0.5))
    np.testing.assert_array_equal(pos, labels > 0)
    np.testing.assert_array_equal(neg, labels == 0)


def test_empty_input():
    labels = np.zeros((0,), np.int32)
    pos, neg = subsample(jax.random.key(0), labels, 8, 0.5)
    assert pos.shape == neg.shape == (0,)
    idx, _, valid = sample(jax.random.key(0), labels, 8, 0.5)
    assert idx.shape == (8,) and not np.asarray(valid).any()


def test_keys():
    labels = _labels(200, 800, 100)
    a = np.asarray(subsample(jax.random.key(0), labels, 64, 0.25)[0])
    b = np.asarray(subsample(jax.random.key(0), labels, 64, 0.25)[0])
    c = np.asarray(subsample(jax.random.key(1), labels, 64, 0.25)[0])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Raw uint32 keys (jax.random.PRNGKey) work too.
    legacy = np.asarray(subsample(jax.random.PRNGKey(0), labels, 64, 0.25)[0])
    assert legacy.sum() == a.sum()


def test_uniformity():
    # Each positive (and each negative) is sampled with probability quota / group size.
    labels = _labels(20, 30, 10, seed=3)
    num_keys = 2000
    keys = jax.random.split(jax.random.key(42), num_keys)
    batched = jax.jit(jax.vmap(lambda k: _both(k, labels, 16, 0.25)))
    (pos, neg), (idx, _, _) = jax.tree.map(np.asarray, batched(keys))
    freq_pos = pos.mean(0)[labels == 1]  # expected 4 / 20 = 0.2
    freq_neg = neg.mean(0)[labels == 0]  # expected 12 / 30 = 0.4
    # Binomial std: sqrt(0.2 * 0.8 / 2000) = 0.009, sqrt(0.4 * 0.6 / 2000) = 0.011; 5 sigma.
    np.testing.assert_allclose(freq_pos, 0.2, atol=0.045)
    np.testing.assert_allclose(freq_neg, 0.4, atol=0.055)
    assert pos[:, labels == -1].sum() == 0 and neg[:, labels == -1].sum() == 0
    # Chi-square over the 20 positives: statistic ~ chi2(19), mean 19; 45 is p ~ 1e-3.
    counts = pos.sum(0)[labels == 1]
    expected = counts.sum() / len(counts)
    assert ((counts - expected) ** 2 / expected).sum() < 45
    # The order of the positive slots is random too (slot 0 is not biased to low indices).
    first = np.bincount(idx[:, 0], minlength=len(labels))[labels == 1]
    assert first.min() > 0.5 * num_keys / 20


def test_vmap_over_batch_with_split_keys():
    batch = np.stack([_labels(10, 50, 5, seed=s) for s in range(4)])
    batch[3] = _labels(2, 3, 60)
    keys = jax.random.split(jax.random.key(7), 4)
    fn = jax.jit(jax.vmap(lambda k, lab: S.sample_indices(k, lab, 32, 0.5)))
    idx, is_pos, valid = map(np.asarray, fn(keys, batch))
    assert idx.shape == (4, 32)
    for i in range(4):
        single = map(np.asarray, sample(keys[i], batch[i], 32, 0.5))
        for got, want in zip((idx[i], is_pos[i], valid[i]), single, strict=True):
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(valid.sum(1), [32, 32, 32, 5])
    np.testing.assert_array_equal(is_pos.sum(1), [10, 10, 10, 2])


def test_trace_count(trace_counter):
    tc = trace_counter(S.subsample_labels, static_argnames=STATIC)
    for seed in range(3):
        tc(jax.random.key(seed), _labels(30, 60, 10, seed), 32, 0.25)
    assert tc.count == 1
    tc2 = trace_counter(S.sample_indices, static_argnames=STATIC)
    for seed in range(3):
        tc2(jax.random.key(seed), jnp.asarray(_labels(30, 60, 10, seed)), 32, 0.25)
    assert tc2.count == 1
