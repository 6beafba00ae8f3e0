"""msrcnn.ops.slot_buckets: running on the smallest bucket of filled slots gives the values
and gradients of running on every slot, wherever the filled slots are read."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msrcnn.ops import slot_buckets

B, S = 2, 12


def test_bucket_lists():
    assert slot_buckets.slot_buckets(128, 16) == (16, 32, 48, 64, 80, 96, 112, 128)
    assert slot_buckets.slot_buckets(12, 5) == (5, 10, 12)
    assert slot_buckets.slot_buckets(12, 0) == (12,)
    assert slot_buckets.slot_buckets(6, 16) == (6,)


def _per_slot_fn(shared, slots):
    """Slot-wise, non-linear in the shared values, reads an integer per-slot input."""
    w, bias = shared
    x = slots["x"] * bias + slots["label"][..., None].astype(jnp.float32)
    return {"y": jnp.tanh(x @ w), "norm": jnp.sum(x * x, -1)}


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    shared = (
        jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
        jnp.asarray(rng.normal(size=(5,)), jnp.float32),
    )
    slots = {
        "x": jnp.asarray(rng.normal(size=(B, S, 5)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 3, (B, S)), jnp.int32),
    }
    return shared, slots


def _loss(shared, slots, filled_per_image, buckets):
    filled = jnp.max(filled_per_image)
    out = slot_buckets.run_filled_slots(_per_slot_fn, shared, slots, filled, buckets)
    keep = jnp.arange(S)[None, :] < filled_per_image[:, None]  # [B, S]
    return jnp.sum(jnp.where(keep[..., None], out["y"], 0.0) ** 2) + jnp.sum(
        jnp.where(keep, out["norm"], 0.0)
    ), out


@pytest.mark.parametrize("filled", [(0, 0), (3, 1), (4, 4), (2, 5), (9, 0), (12, 7), (12, 12)])
def test_values_and_gradients_equal_every_slot(filled):
    shared, slots = _problem()
    filled = jnp.asarray(filled, jnp.int32)
    bucketed = jax.jit(jax.value_and_grad(_loss, has_aux=True), static_argnums=3)
    (value, out), grads = bucketed(shared, slots, filled, slot_buckets.slot_buckets(S, 4))
    (want_value, want_out), want_grads = jax.value_and_grad(_loss, has_aux=True)(
        shared, slots, filled, (S,)
    )
    np.testing.assert_allclose(value, want_value, rtol=1e-6)
    for g, w in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
    # Slots up to the chosen bucket are computed, the rest are zero.
    bucket = next(b for b in (4, 8, 12) if b >= int(jnp.max(filled)))
    np.testing.assert_allclose(out["y"][:, :bucket], want_out["y"][:, :bucket], rtol=1e-6)
    assert not np.any(np.asarray(out["y"][:, bucket:]))


def test_one_trace_for_every_fill():
    shared, slots = _problem()
    calls = []

    def loss(shared, filled):
        calls.append(1)
        out = slot_buckets.run_filled_slots(
            _per_slot_fn, shared, slots, filled, slot_buckets.slot_buckets(S, 4)
        )
        return jnp.sum(out["y"])

    step = jax.jit(jax.grad(loss))
    for filled in range(S + 1):
        step(shared, jnp.int32(filled))
    assert len(calls) == 1
