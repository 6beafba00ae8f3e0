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


def _structure_depends_on_slots(shared, slots):
    """Adds an extra non-linear step for more than 4 slots: the buckets' pullbacks differ in
    their residuals, so the backward must recompute the chosen bucket."""
    out = _per_slot_fn(shared, slots)
    if slots["x"].shape[1] > 4:
        out["y"] = jnp.sin(out["y"])
    return out


def test_residuals_are_kept_when_buckets_line_up_else_recomputed():
    shared, slots = _problem()
    buckets = slot_buckets.slot_buckets(S, 4)
    layouts = slot_buckets._residual_layouts(_per_slot_fn, buckets, shared, slots)
    assert layouts is not None
    # Padded to the largest bucket: slot-sized residuals have S slots.
    assert any(x.shape[:2] == (B, S) for x in layouts[1])
    assert (
        slot_buckets._residual_layouts(_structure_depends_on_slots, buckets, shared, slots) is None
    )


@pytest.mark.parametrize("filled", [(3, 1), (2, 5), (12, 7)])
def test_recomputing_backward_equals_every_slot(filled):
    shared, slots = _problem()
    most = max(filled)

    def loss(shared, buckets):
        out = slot_buckets.run_filled_slots(
            _structure_depends_on_slots, shared, slots, jnp.int32(most), buckets
        )
        return jnp.sum(out["y"][:, :most] ** 2)

    got = jax.jit(jax.grad(loss), static_argnums=1)(shared, slot_buckets.slot_buckets(S, 4))
    # On every slot the extra step applies; the chosen bucket applies it only above 4 slots.
    bucket = next(b for b in (4, 8, 12) if b >= most)
    want_fn = _structure_depends_on_slots if bucket > 4 else _per_slot_fn

    def want_loss(shared):
        out = want_fn(shared, jax.tree.map(lambda x: x[:, :bucket], slots))
        return jnp.sum(out["y"][:, :most] ** 2)

    for g, w in zip(got, jax.grad(want_loss)(shared), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
